"""Google's run_squad.py (github.com/google-research/bert), re-implemented independently in its
own plain style for the SQuAD tests: dict features, per-word tokenization, Python sorts, and the
SQuAD v2.0 branches (`is_impossible` training labels, the null answer in `write_predictions`)."""

from __future__ import annotations

import collections
import math

from google_tokenization import basic_tokenize as google_basic_tokenize


def google_whitespace_split(text):
    doc_tokens, char_to_word_offset, prev_is_whitespace = [], [], True
    for c in text:
        if c in " \t\r\n" or ord(c) == 0x202F:
            prev_is_whitespace = True
        else:
            if prev_is_whitespace:
                doc_tokens.append(c)
            else:
                doc_tokens[-1] += c
            prev_is_whitespace = False
        char_to_word_offset.append(len(doc_tokens) - 1)
    return doc_tokens, char_to_word_offset


def google_features(examples, tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64):
    """Google's convert_examples_to_features (training branch: gold positions; an
    `is_impossible` example has the null span 0, 0 in every window)."""
    features = []
    for example_index, ex in enumerate(examples):
        query = tokenizer.tokenize(ex.question_text)[:max_query_length]
        tok_to_orig, orig_to_tok, doc = [], [], []
        for i, word in enumerate(ex.doc_tokens):
            orig_to_tok.append(len(doc))
            for sub in tokenizer.tokenize(word):
                tok_to_orig.append(i)
                doc.append(sub)
        if ex.is_impossible:
            tok_start = tok_end = -1
        else:
            tok_start = orig_to_tok[ex.start_position]
            if ex.end_position < len(ex.doc_tokens) - 1:
                tok_end = orig_to_tok[ex.end_position + 1] - 1
            else:
                tok_end = len(doc) - 1
            answer = " ".join(tokenizer.tokenize(ex.answers[0]["text"]))
            improved = [(s, e) for s in range(tok_start, tok_end + 1)
                        for e in range(tok_end, s - 1, -1) if " ".join(doc[s:e + 1]) == answer]
            tok_start, tok_end = improved[0] if improved else (tok_start, tok_end)
        max_doc = max_seq_length - len(query) - 3
        spans, offset = [], 0
        while offset < len(doc):
            length = min(len(doc) - offset, max_doc)
            spans.append((offset, length))
            if offset + length == len(doc):
                break
            offset += min(length, doc_stride)
        for span_index, (start, length) in enumerate(spans):
            tokens = ["[CLS]", *query, "[SEP]"]
            segment_ids = [0] * len(tokens)
            to_orig, is_max = {}, {}
            for i in range(length):
                pos = start + i
                to_orig[len(tokens)] = tok_to_orig[pos]
                is_max[len(tokens)] = google_is_max_context(spans, span_index, pos)
                tokens.append(doc[pos])
                segment_ids.append(1)
            tokens.append("[SEP]")
            segment_ids.append(1)
            input_ids = tokenizer.convert_tokens_to_ids(tokens)
            mask = [1] * len(input_ids)
            pad = max_seq_length - len(input_ids)
            if not ex.is_impossible and start <= tok_start and tok_end <= start + length - 1:
                sp, ep = tok_start - start + len(query) + 2, tok_end - start + len(query) + 2
            else:
                sp = ep = 0
            features.append(dict(example_index=example_index, tokens=tokens,
                                 token_to_orig_map=to_orig, token_is_max_context=is_max,
                                 input_ids=input_ids + [0] * pad, input_mask=mask + [0] * pad,
                                 segment_ids=segment_ids + [0] * pad, start=sp, end=ep))
    return features


def google_is_max_context(spans, cur, position):
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best_score is None or score > best_score:
                best_score, best_index = score, index
    return cur == best_index


def google_final_text(pred_text, orig_text, do_lower_case):
    def strip_spaces(text):
        chars, ns_to_s = [], collections.OrderedDict()
        for i, c in enumerate(text):
            if c != " ":
                ns_to_s[len(chars)] = i
                chars.append(c)
        return "".join(chars), ns_to_s

    tok_text = " ".join(google_basic_tokenize(orig_text, do_lower_case))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_map = strip_spaces(orig_text)
    tok_ns, tok_map = strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {s: ns for ns, s in tok_map.items()}
    if start not in tok_s_to_ns or end not in tok_s_to_ns:
        return orig_text
    return orig_text[orig_map[tok_s_to_ns[start]]:orig_map[tok_s_to_ns[end]] + 1]


def google_predictions(examples, features, start_logits, end_logits, do_lower_case,
                       n_best_size=20, max_answer_length=30, version_2_with_negative=False,
                       null_score_diff_threshold=0.0):
    """Google's write_predictions, from Python lists of logits: (predictions, n-best) and, with
    version_2_with_negative, the null odds (Google's scores_diff_json) too."""
    def best_indexes(logits):
        return [i for i, _ in sorted(enumerate(logits), key=lambda x: x[1], reverse=True)][:n_best_size]

    by_example = collections.defaultdict(list)
    for index, f in enumerate(features):
        by_example[f["example_index"]].append(index)
    predictions, all_nbest, scores_diff = {}, {}, {}
    for example_index, ex in enumerate(examples):
        prelim = []
        score_null, min_null_feature, null_start, null_end = 1000000, 0, 0, 0
        for fi in by_example[example_index]:
            f, sl, el = features[fi], start_logits[fi], end_logits[fi]
            if version_2_with_negative and sl[0] + el[0] < score_null:
                score_null, min_null_feature, null_start, null_end = sl[0] + el[0], fi, sl[0], el[0]
            for s in best_indexes(sl):
                for e in best_indexes(el):
                    if (s in f["token_to_orig_map"] and e in f["token_to_orig_map"]
                            and f["token_is_max_context"].get(s, False)
                            and s <= e and e - s + 1 <= max_answer_length):
                        prelim.append((fi, s, e, sl[s], el[e]))
        if version_2_with_negative:
            prelim.append((min_null_feature, 0, 0, null_start, null_end))
        prelim.sort(key=lambda x: x[3] + x[4], reverse=True)
        seen, nbest = set(), []
        for fi, s, e, s_logit, e_logit in prelim:
            if len(nbest) >= n_best_size:
                break
            if s == 0:  # the null answer
                seen.add("")
                nbest.append(("", s_logit, e_logit))
                continue
            f = features[fi]
            tok_text = " ".join(f["tokens"][s:e + 1]).replace(" ##", "").replace("##", "")
            tok_text = " ".join(tok_text.strip().split())
            orig_text = " ".join(ex.doc_tokens[f["token_to_orig_map"][s]:f["token_to_orig_map"][e] + 1])
            text = google_final_text(tok_text, orig_text, do_lower_case)
            if text not in seen:
                seen.add(text)
                nbest.append((text, s_logit, e_logit))
        if version_2_with_negative and "" not in seen:
            nbest.append(("", null_start, null_end))
        if not nbest:  # Google writes the placeholder "empty"; bertforge writes ""
            nbest.append(("", 0.0, 0.0))
        scores = [s + e for _, s, e in nbest]
        exps = [math.exp(x - max(scores)) for x in scores]
        predictions[ex.qas_id] = nbest[0][0]
        all_nbest[ex.qas_id] = [dict(text=t, probability=x / sum(exps), start_logit=s, end_logit=e)
                                for (t, s, e), x in zip(nbest, exps)]
        if version_2_with_negative:
            # Google's fails without a non-null entry (None.start_logit); the tests give one.
            best_non_null = next(entry for entry in nbest if entry[0])
            scores_diff[ex.qas_id] = score_null - best_non_null[1] - best_non_null[2]
            predictions[ex.qas_id] = ("" if scores_diff[ex.qas_id] > null_score_diff_threshold
                                      else best_non_null[0])
    if version_2_with_negative:
        return predictions, all_nbest, scores_diff
    return predictions, all_nbest
