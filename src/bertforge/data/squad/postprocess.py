"""SQuAD answers from start/end logits: Google's `write_predictions` (v1.1, and v2.0 with the
null answer) with `get_final_text`, and the prediction files.

An example with no valid span predicts "" (Google writes the placeholder text "empty").
`postprocess` takes logits trimmed to any width from the longest window up to
max_seq_length; padding never competes for the n best places (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bertforge.data.squad.examples import SquadExample
from bertforge.data.squad.features import SquadFeatures
from bertforge.fileio import atomic_write_json
from bertforge.tokenization.basic import basic_tokenize


def postprocess(examples: Sequence[SquadExample], features: SquadFeatures,
                start_logits: np.ndarray, end_logits: np.ndarray, n_best_size: int = 20,
                max_answer_length: int = 30, do_lower_case: bool | None = None,
                progress: bool = True) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """Google's `write_predictions` (SQuAD v1.1): best answer text and n-best list per question.

    start_logits, end_logits: (N, W), row n belonging to features[n], with any width W from
    the longest window's real length up to T = features.max_seq_length: positions at or past
    W, and positions where the window is padding (attention_mask 0), are padding, whatever
    their values; -inf marks a position that can never be a start or an end. Padding and -inf
    positions are left out before the n_best_size best logits are picked, so they never take
    a place there (Google ranks all T positions, which is the same when padding scores lowest,
    as `span_logits` makes it).

    A span is a candidate when its start is among the window's n_best_size best start logits
    and its end among the best end logits, both lie in the context part, the start token has
    max context in this window, start <= end, and it spans at most max_answer_length tokens.
    Candidates of all an example's windows are ranked by start + end logit; the first
    n_best_size distinct texts (mapped back to the original context by `get_final_text`) make
    the n-best list, with softmax probabilities. `do_lower_case` defaults to the tokenizer
    setting the features were built with. Every example gets a prediction: "" when it has no
    candidate.

    Each n-best entry holds text, probability, start_logit, end_logit, and start, end: where
    the answer lies in the example's context, as character offsets. `context[start:end]` is
    the text, except that where the answer spans several words, the text joins them with
    single spaces (as Google's does) and the context has its own whitespace between them. The
    empty answer has start = end = 0.
    """
    predictions, nbest_all, _ = _decode(examples, features, start_logits, end_logits, n_best_size,
                                        max_answer_length, do_lower_case, progress, None)
    return predictions, nbest_all


def postprocess_v2(examples: Sequence[SquadExample], features: SquadFeatures,
                   start_logits: np.ndarray, end_logits: np.ndarray, n_best_size: int = 20,
                   max_answer_length: int = 30, null_score_diff_threshold: float = 0.0,
                   do_lower_case: bool | None = None, progress: bool = True
                   ) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Google's `write_predictions` with `version_2_with_negative` (SQuAD v2.0): predictions,
    n-best lists and null odds (question id -> score_null - best non-null score, Google's
    null_odds.json).

    As `postprocess`, plus the null answer "" (the span start = end = 0, [CLS]): its score
    score_null is the smallest start_logits[n, 0] + end_logits[n, 0] over the example's
    windows n (the first such window on ties). The null entry takes its place among the ranked
    candidates (after candidates of equal score) and is added after the n best when it did not
    make them. The prediction is "" when score_null - (best non-null start + end logit) exceeds
    `null_score_diff_threshold`, else the best non-null text. An example without any non-null
    candidate predicts "" with null odds score_null - 0 (Google has the placeholder "empty" of
    logits 0 there; without any window, score_null is 0 too). Logits at position 0 must be
    finite.
    """
    return _decode(examples, features, start_logits, end_logits, n_best_size, max_answer_length,
                   do_lower_case, progress, null_score_diff_threshold)


def _decode(examples: Sequence[SquadExample], features: SquadFeatures, start_logits: np.ndarray,
            end_logits: np.ndarray, n_best_size: int, max_answer_length: int,
            do_lower_case: bool | None, progress: bool, null_score_diff_threshold: float | None
            ) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]], dict[str, float]]:
    """`postprocess` (null_score_diff_threshold None) or `postprocess_v2`."""
    start_logits = _checked_logits(start_logits, features, "start_logits")
    end_logits = _checked_logits(end_logits, features, "end_logits")
    lower = features.do_lower_case if do_lower_case is None else do_lower_case
    feature, start, end, score = _candidates(features, start_logits, end_logits, n_best_size,
                                             max_answer_length)
    example_of = features.example_index[feature]
    # By example; within one, by score (stable, so ties keep Google's candidate order).
    order = np.lexsort((-score, example_of))
    bounds = np.searchsorted(example_of[order], np.arange(len(examples) + 1))
    with_null = null_score_diff_threshold is not None
    null_feature = _null_features(features, start_logits, end_logits, len(examples)) if with_null else None
    predictions: dict[str, str] = {}
    nbest_all: dict[str, list[dict[str, Any]]] = {}
    null_odds: dict[str, float] = {}
    for i, example in enumerate(tqdm(examples, desc="SQuAD answers", disable=not progress)):
        chosen = order[bounds[i]:bounds[i + 1]]
        null = None
        if null_feature is not None and null_feature[i] >= 0:
            null = (float(start_logits[null_feature[i], 0]), float(end_logits[null_feature[i], 0]))
        nbest = _nbest(example, features, feature[chosen], start[chosen], end[chosen],
                       score[chosen], start_logits, end_logits, n_best_size, lower, null)
        nbest_all[example.qas_id] = nbest
        if not with_null:
            predictions[example.qas_id] = nbest[0]["text"]
            continue
        best = next((e for e in nbest if e["text"]), None)
        score_null = sum(null) if null is not None else 0.0
        score_diff = score_null - (best["start_logit"] + best["end_logit"] if best else 0.0)
        null_odds[example.qas_id] = score_diff
        no_answer = best is None or score_diff > null_score_diff_threshold
        predictions[example.qas_id] = "" if no_answer else best["text"]
    return predictions, nbest_all, null_odds


def _null_features(features: SquadFeatures, start_logits: np.ndarray, end_logits: np.ndarray,
                   num_examples: int) -> np.ndarray:
    """(examples,) the window of each example with the smallest null score start[0] + end[0],
    the first window on ties (Google's min_null_feature_index); -1 for an example without one."""
    null_score = start_logits[:, 0] + end_logits[:, 0]                  # (N,)
    if not np.isfinite(null_score).all():
        raise ValueError("SQuAD v2.0 decoding needs finite logits at position 0 ([CLS], the null "
                         "answer) in every window")
    # By example, then null score, then window number: the first row of an example is its min.
    order = np.lexsort((features.doc_span_index, null_score, features.example_index))
    if not len(order):
        return np.full(num_examples, -1, dtype=np.int64)
    first = np.searchsorted(features.example_index[order], np.arange(num_examples))
    rows = order[np.minimum(first, len(order) - 1)]
    return np.where(features.example_index[rows] == np.arange(num_examples), rows, -1)


def _checked_logits(logits: np.ndarray, features: SquadFeatures, name: str) -> np.ndarray:
    """(N, W) float64 logits, after checking them against the shape contract of `postprocess`."""
    logits = np.asarray(logits, dtype=np.float64)
    longest = int(features.attention_mask.sum(axis=1).max(initial=0))
    if (logits.ndim != 2 or logits.shape[0] != len(features)
            or not longest <= logits.shape[1] <= features.max_seq_length):
        raise ValueError(f"{name} must have shape (features, W) = ({len(features)}, W) with W "
                         f"from the longest window's length {longest} to max_seq_length "
                         f"{features.max_seq_length}; got {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any():
        raise ValueError(f"{name} contain NaN or +inf (only -inf may mark impossible positions)")
    return logits


def _best_positions(logits: np.ndarray, allowed: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the positions of the k best allowed logits, best first, and whether each is a
    real pick (False where a row has fewer than k allowed positions); both (N, k)."""
    ranked = np.where(allowed, logits, -np.inf)
    # Google sorts with Python's stable sort: equal logits keep the lower position first.
    best = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    return best, np.take_along_axis(allowed, best, axis=1)


def _candidates(features: SquadFeatures, start_logits: np.ndarray, end_logits: np.ndarray,
                n_best_size: int, max_answer_length: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All valid (feature, start, end) spans and their scores, in Google's order: by feature,
    then start-logit rank, then end-logit rank."""
    width = start_logits.shape[1]
    k = min(n_best_size, width)
    real = features.attention_mask[:, :width].astype(bool)                  # (N, W)
    starts, start_ok = _best_positions(start_logits, real & np.isfinite(start_logits), k)
    ends, end_ok = _best_positions(end_logits, real & np.isfinite(end_logits), k)  # (N, k)
    lo = features.doc_offset[:, None].astype(np.int64)
    hi = lo + features.doc_span_length[:, None]
    rows = np.arange(len(features))[:, None]
    start_ok &= (starts >= lo) & (starts < hi) & features.token_is_max_context[rows, starts]
    end_ok &= (ends >= lo) & (ends < hi)
    s, e = starts[:, :, None], ends[:, None, :]                         # (N, k, 1), (N, 1, k)
    valid = (start_ok[:, :, None] & end_ok[:, None, :] & (e >= s)
             & (e - s + 1 <= max_answer_length))                        # (N, k, k)
    n, i, j = np.nonzero(valid)
    start, end = starts[n, i], ends[n, j]
    return n, start, end, start_logits[n, start] + end_logits[n, end]


def _nbest(example: SquadExample, features: SquadFeatures, feature: np.ndarray,
           start: np.ndarray, end: np.ndarray, score: np.ndarray, start_logits: np.ndarray,
           end_logits: np.ndarray, n_best_size: int, do_lower_case: bool,
           null: tuple[float, float] | None) -> list[dict[str, Any]]:
    """The first n_best_size distinct answer texts of an example's ranked candidates; with
    `null` (its start and end logit), the null answer "" ranked among them (after candidates
    of equal score, as Google's stable sort puts it last) or else added at the end."""
    entries: list[tuple[str, tuple[int, int], float, float]] = []
    seen: set[str] = set()
    null_rank = len(score) if null is None else int(np.count_nonzero(score >= sum(null)))
    for rank, (f, s, e) in enumerate(zip(feature.tolist(), start.tolist(), end.tolist())):
        if len(entries) >= n_best_size:
            break
        if rank == null_rank and null is not None:
            entries.append(("", (0, 0), *null))
            seen.add("")
            if len(entries) >= n_best_size:
                break
        text, span = _span_text(example, features, f, s, e, do_lower_case)
        if text in seen:
            continue
        seen.add(text)
        entries.append((text, span, float(start_logits[f, s]), float(end_logits[f, e])))
    if null is not None and "" not in seen:
        entries.append(("", (0, 0), *null))
    if not entries:
        entries.append(("", (0, 0), 0.0, 0.0))
    probs = _softmax([s + e for _, _, s, e in entries])
    return [{"text": t, "probability": p, "start_logit": s, "end_logit": e, "start": a, "end": b}
            for (t, (a, b), s, e), p in zip(entries, probs)]


def _span_text(example: SquadExample, features: SquadFeatures, f: int, start: int, end: int,
               do_lower_case: bool) -> tuple[str, tuple[int, int]]:
    """Original context text of the tokens start..end of window f, and its character span
    in the context."""
    ids = features.input_ids[f, start:end + 1].tolist()
    pieces = " ".join(map(features.id_to_token.__getitem__, ids))
    # Undo WordPiece's split-offs, then normalise whitespace (Google's order of steps).
    tok_text = " ".join(pieces.replace(" ##", "").replace("##", "").strip().split())
    first, last = features.token_to_orig(f, start), features.token_to_orig(f, end)
    orig_text = " ".join(example.doc_tokens[first:last + 1])
    a, b = final_text_span(tok_text, orig_text, do_lower_case)
    return orig_text[a:b], (_context_position(example, first, orig_text, a),
                            _context_position(example, first, orig_text, b - 1) + 1)


def _context_position(example: SquadExample, first_word: int, orig_text: str, k: int) -> int:
    """Where character k of `orig_text` (the words from `first_word` on, joined by single
    spaces; k not a space) lies in the example's context."""
    word = first_word + orig_text.count(" ", 0, k)
    within = k - (orig_text.rfind(" ", 0, k) + 1)
    # char_to_word_offset never decreases, and a word's first character is the first to map to it.
    return int(np.searchsorted(example.char_to_word_offset, word)) + within


def _softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [x / total for x in exps]


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool) -> str:
    """Google's `get_final_text`: the part of `orig_text` that the normalised `pred_text`
    came from (e.g. "Steve Smith" for pred "steve smith" in "Steve Smith's").

    Characters of the basic-tokenized original and of the original are aligned one to one
    after removing spaces; when that is impossible, the whole `orig_text` is returned.
    """
    start, end = final_text_span(pred_text, orig_text, do_lower_case)
    return orig_text[start:end]


def final_text_span(pred_text: str, orig_text: str, do_lower_case: bool) -> tuple[int, int]:
    """Where `get_final_text`'s answer lies in `orig_text`: (start, end), end exclusive."""
    whole = (0, len(orig_text))
    tok_text = " ".join(basic_tokenize(orig_text, do_lower_case))
    start = tok_text.find(pred_text)
    end = start + len(pred_text) - 1
    if start == -1 or end < start or " " in (tok_text[start], tok_text[end]):
        return whole
    if len(orig_text) - orig_text.count(" ") != len(tok_text) - tok_text.count(" "):
        return whole
    # Position among non-space characters = position - spaces before it.
    ns_start = start - tok_text.count(" ", 0, start)
    ns_end = end - tok_text.count(" ", 0, end)
    return (_non_space_position(orig_text, ns_start),
            _non_space_position(orig_text, ns_end) + 1)


def _non_space_position(text: str, k: int) -> int:
    """Index in `text` of its k-th (from 0) character that is not a space."""
    position = 0
    for piece in text.split(" "):
        if k < len(piece):
            return position + k
        k -= len(piece)
        position += len(piece) + 1
    raise IndexError(f"{text!r} has fewer than {k + 1} non-space characters")


def write_predictions(out_dir: str | Path, predictions: dict[str, str],
                      nbest: dict[str, list[dict[str, Any]]],
                      null_odds: dict[str, float] | None = None) -> tuple[Path, ...]:
    """Write predictions.json (id -> text) and nbest_predictions.json, and with `null_odds`
    (SQuAD v2.0) null_odds.json (id -> score_null - best non-null score), each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {out / "predictions.json": predictions, out / "nbest_predictions.json": nbest}
    if null_odds is not None:
        files[out / "null_odds.json"] = null_odds
    for path, content in files.items():
        # A crash mid-write must not leave a truncated file that looks like a result.
        atomic_write_json(path, content, indent=4)
    return tuple(files)
