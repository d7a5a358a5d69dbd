"""The model's fast paths compute the function of the plain path: each unpadded attention kernel
against softmax attention written out, FlashAttention's varlen path (its CPU reference kernel,
see bertforge.bench.cpu_flash) eager and compiled, the kernel choice per device and precision,
the forward that never waits for the device when the host knows the lengths, grouped CPU
inference, and compiled layers."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from bertforge.bench.cpu_flash import CpuFlash, reference_varlen_attention
from bertforge.config import BertConfig
from bertforge.checkpoint import native_to_hf
from bertforge.errors import DataError
from bertforge.model import BertForQuestionAnswering
from bertforge.model import attention
from bertforge.model import bert as bert_module
from conftest import hf_config, random_batch, tiny_config

aten = torch.ops.aten


def _mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()


def _lengths(batch) -> list[int]:
    return batch["attention_mask"].sum(dim=1).tolist()


def _qa_loss(model, batch, **kwargs):
    mask = batch["attention_mask"].bool()
    start, end = model(**batch, **kwargs)
    (start[mask].sum() + (end[mask] ** 2).sum()).backward()
    return start.detach(), end.detach()


def _assert_same_grads(model, reference, rtol=1e-5, atol=1e-6):
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=name)


@pytest.fixture
def cpu_flash(monkeypatch):
    """The CPU counts as a device with FlashAttention, and the op runs bertforge.bench.cpu_flash's
    kernels (the CUDA one cannot run here)."""
    flash = CpuFlash()
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", flash.forward, "CPU")
    lib.impl("_flash_attention_backward", flash.backward, "CPU")
    monkeypatch.setattr(attention, "_flash_varlen_on", lambda device: device.type == "cpu")
    yield flash
    lib._destroy()


# ---- the unpadded attention kernels -----------------------------------------------------------


@pytest.mark.parametrize("path", ["per_sequence", "padded_grid", "flash_varlen"])
def test_unpadded_attention_kernels_match_reference(path, request):
    torch.manual_seed(1)
    lengths, T = [5, 13, 1, 9], 13
    layout = attention.Unpadded.from_mask(_mask(lengths, T))
    qkv = torch.randn(sum(lengths), 3, 4, 8)
    q, k, v = qkv.unbind(1)
    if path == "per_sequence":
        out = attention._per_sequence_attention(q, k, v, layout.lengths, 0.0)
    elif path == "padded_grid":
        out = attention._padded_grid_attention(qkv, layout, 0.0)
    else:  # the op's CPU reference: checks what the model passes (cu_seqlens, max_seqlen, q/k/v)
        flash = request.getfixturevalue("cpu_flash")
        out = attention._flash_varlen_attention(q, k, v, layout, 0.0)
        assert flash.max_seqlens == [13]
    cu = torch.tensor([0, 5, 18, 19, 28])
    torch.testing.assert_close(out, reference_varlen_attention(q, k, v, cu)[0], rtol=1e-5, atol=1e-5)


def test_unpadded_layout_without_padding_is_the_padded_layout():
    full = torch.ones(3, 7, dtype=torch.long)
    assert attention.Unpadded.from_mask(full) is None
    assert attention.Unpadded.from_mask(full, [7, 7, 7]) is None


def test_layout_from_host_lengths_equals_layout_from_mask():
    mask = _mask([4, 9, 2], 9)
    mask[1, 3] = 0  # padding need not be a suffix
    from_mask = attention.Unpadded.from_mask(mask)
    from_host = attention.Unpadded.from_mask(mask, [4, 8, 2])
    assert from_host.lengths == from_mask.lengths == [4, 8, 2]
    assert from_host.max_seqlen == from_mask.max_seqlen == 8
    assert torch.equal(from_host.indices, from_mask.indices)
    assert torch.equal(from_host.indices, mask.flatten().nonzero().flatten())
    assert from_host.cu_seqlens.tolist() == [0, 4, 12, 14]
    assert from_host.cu_seqlens.dtype == torch.int32
    assert torch.equal(from_host.positions(), torch.tensor([0, 1, 2, 3, 0, 1, 2, 4, 5, 6, 7, 8, 0, 1]))


# ---- which kernel runs ------------------------------------------------------------------------


def test_flash_varlen_input_limits():
    def q(dtype, head_dim):
        return torch.empty(5, 2, head_dim, dtype=dtype, device="meta")

    for dtype in (torch.float16, torch.bfloat16):
        for head_dim in (8, 64, 128, 256):
            assert attention._flash_varlen_supports(q(dtype, head_dim))
        for head_dim in (4, 12, 63, 264):
            assert not attention._flash_varlen_supports(q(dtype, head_dim))
    assert not attention._flash_varlen_supports(q(torch.float32, 64))


@pytest.mark.parametrize("capability, built, hip, expected", [
    ((8, 0), True, None, True), ((9, 0), True, None, True), ((7, 5), True, None, False),
    ((9, 0), False, None, False), ((9, 0), True, "6.2", False),
])
def test_flash_varlen_devices(monkeypatch, capability, built, hip, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(attention, "_FLASH_BUILT", built)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert attention._flash_varlen_on(torch.device("cuda", 0)) is expected
    assert not attention._flash_varlen_on(torch.device("cpu"))


@pytest.mark.parametrize("device, dtype, head_dim, flash_device, compiling, expected", [
    ("meta", torch.bfloat16, 64, True, False, "flash"),  # CUDA fp16/bf16
    ("meta", torch.float16, 8, True, True, "flash"),  # the same inside torch.compile
    ("meta", torch.float32, 64, True, False, "grid"),  # CUDA fp32 / tf32
    ("meta", torch.bfloat16, 12, True, False, "grid"),  # head_dim the kernel cannot take
    ("meta", torch.bfloat16, 64, False, False, "grid"),  # other accelerators
    ("cpu", torch.float32, 64, False, False, "per_sequence"),  # CPU, eager
    ("cpu", torch.float32, 64, False, True, "grid"),  # CPU under torch.compile
])
def test_attention_kernel_choice(monkeypatch, device, dtype, head_dim, flash_device, compiling,
                                 expected):
    chosen = []

    def record(name):
        def kernel(*args):
            chosen.append(name)
            return torch.empty(6, 2, head_dim, dtype=dtype, device=device)
        return kernel

    monkeypatch.setattr(attention, "_flash_varlen_attention", record("flash"))
    monkeypatch.setattr(attention, "_padded_grid_attention", record("grid"))
    monkeypatch.setattr(attention, "_per_sequence_attention", record("per_sequence"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    layout = attention.Unpadded.from_mask(_mask([2, 4], 4).to(device), [2, 4])
    layout.flash_varlen = flash_device
    qkv = torch.empty(6, 3, 2, head_dim, dtype=dtype, device=device)
    attention.unpadded_attention(qkv, layout, 0.1)
    assert chosen == [expected]



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_per_sequence_attention_runs_the_fused_kernel(dtype):
    """SDPA sends 3-D inputs to its unfused math kernel (3x slower on the CPU); each sequence
    must reach the fused CPU kernel, and give what the math kernel gives."""
    lengths = [5, 9, 3]
    q, k, v = torch.randn(sum(lengths), 3, 4, 16, dtype=dtype).unbind(1)  # each (N, nh, hd)
    with torch.profiler.profile() as prof:
        out = attention._per_sequence_attention(q, k, v, lengths, dropout_p=0.0)
    names = {event.name for event in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_attention_math" not in names
    expected = torch.cat([torch.ops.aten._scaled_dot_product_attention_math(
        qi.transpose(0, 1).float(), ki.transpose(0, 1).float(), vi.transpose(0, 1).float())[0].transpose(0, 1)
        for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths))])
    torch.testing.assert_close(out.float(), expected, atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)

# ---- FlashAttention's varlen path, through its CPU reference kernel ---------------------------


@pytest.fixture
def flash_in_fp32(cpu_flash, monkeypatch):
    """The flash path in fp32, so that it compares tightly with the padded path; the kernel's
    own input limits are tested above."""
    monkeypatch.setattr(attention, "_flash_varlen_supports", lambda q: True)
    return cpu_flash


@pytest.mark.parametrize("path", ["per_sequence", "flash"])
def test_unpadded_paths_match_padded_path_forward_and_backward(path, request):
    """In training mode (dropout off to compare), forward and gradients."""
    flash = request.getfixturevalue("flash_in_fp32") if path == "flash" else None
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    padded = BertForQuestionAnswering(cfg, unpad=False)
    unpadded = BertForQuestionAnswering(cfg, unpad=True)
    unpadded.load_state_dict(padded.state_dict())
    batch = random_batch(cfg, batch=5, seq=10, seed=3)
    mask = batch["attention_mask"].bool()
    want = _qa_loss(padded, batch)
    got = _qa_loss(unpadded, batch, seq_lengths=_lengths(batch))
    if flash is not None:
        assert flash.dropout_ps == [0.0, 0.0]  # one call per layer: the flash path ran
    for a, b in zip(got, want):
        torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-5)
    _assert_same_grads(unpadded, padded)


def test_flash_path_gets_the_attention_dropout_in_training_only(flash_in_fp32):
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1)
    model = BertForQuestionAnswering(cfg, unpad=True)
    batch = random_batch(cfg, batch=3, seq=8, seed=2)
    model.train()(**batch)
    with torch.no_grad():
        model.eval()(**batch)
    assert flash_in_fp32.dropout_ps == [0.1, 0.1, 0.0, 0.0]


def _fake_cuda_layer(config: BertConfig, mode: FakeTensorMode):
    """A BertLayer in bf16 whose parameters are fake CUDA tensors (shapes only, no data), and
    the function that calls it with them."""
    with torch.device("meta"):
        layer = bert_module.BertLayer(config).to(torch.bfloat16)
    cuda = torch.device("cuda", 0)
    params = {n: FakeTensor(mode, p.detach(), cuda) for n, p in layer.named_parameters()}
    return lambda x, layout: torch.func.functional_call(layer, params, (x, layout))


def _layout(lengths: list[int], device, flash_varlen=True) -> attention.Unpadded:
    """A layout of the given lengths with tensors that carry shapes only."""
    B, T, N = len(lengths), max(lengths), sum(lengths)
    return attention.Unpadded(
        torch.empty(N, dtype=torch.long, device=device), torch.empty(B + 1, dtype=torch.int32, device=device),
        lengths, max(lengths), B, T, torch.empty(B, 1, 1, T, dtype=torch.bool, device=device), flash_varlen)


def test_compiled_layer_traces_flash_into_one_graph_with_fake_cuda_tensors():
    """What torch.compile sees on a GPU: dynamo traces a training-mode layer on fake CUDA
    tensors (this CPU build cannot run CUDA kernels, only their shapes) into one graph that
    holds the flash op with the attention dropout, and a batch of other lengths reuses it.
    (Autograd needs a CUDA device even for fake tensors: the backward graph is traced on the
    meta device below.)"""
    cfg = tiny_config(hidden_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    mode = FakeTensorMode()
    layer = _fake_cuda_layer(cfg, mode)
    compiled = torch.compile(layer, backend=backend, dynamic=True, fullgraph=True)
    # Python floats as constants in the graph, as inductor ends up taking them (dynamic=True
    # otherwise hands this bare backend the dropout probability as a graph input).
    with mode, torch._dynamo.config.patch(specialize_float=True):
        for lengths in ([7, 13], [3, 17, 9, 1]):
            layout = _layout(lengths, "cuda")
            y = compiled(torch.empty(sum(lengths), 64, dtype=torch.bfloat16, device="cuda"), layout)
            assert y.shape == (sum(lengths), 64) and y.device.type == "cuda"
    flash_calls = [n for n in graphs[-1].graph.nodes if n.target is aten._flash_attention_forward]
    assert len(flash_calls) == 1 and flash_calls[0].args[7] == 0.1  # dropout_p
    traced = len(graphs)
    with mode, torch._dynamo.config.patch(specialize_float=True):
        compiled(torch.empty(5, 64, dtype=torch.bfloat16, device="cuda"), _layout([5], "cuda"))
    assert len(graphs) == traced  # no recompilation for new lengths


def test_compiled_layer_has_flash_forward_and_backward_in_its_graphs():
    """AOT autograd's forward and backward graphs of a compiled layer (meta tensors: shapes
    only) call the flash op and its backward; fullgraph=True fails on any graph break."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    cfg = tiny_config(hidden_size=64, attention_probs_dropout_prob=0.1)
    ops = {"forward": set(), "backward": set()}

    def record(kind):
        def compiler(gm, example_inputs):
            ops[kind] |= {n.target for n in gm.graph.nodes if n.op == "call_function"}
            return make_boxed_func(gm.forward)
        return compiler

    with torch.device("meta"):
        layer = bert_module.BertLayer(cfg).to(torch.bfloat16).train()
    layer.compile(dynamic=True, fullgraph=True,
                  backend=aot_autograd(fw_compiler=record("forward"), bw_compiler=record("backward")))
    x = torch.empty(20, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
    layer(x, _layout([7, 13], "meta")).sum().backward()
    assert aten._flash_attention_forward.default in ops["forward"]
    assert aten._flash_attention_backward.default in ops["backward"]
    assert x.grad.shape == x.shape and layer.attention.qkv.weight.grad is not None


# ---- the forward needs no host sync when the host knows the lengths ---------------------------


class SyncSpy(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: reading a value back
    (_local_scalar_dense, behind .item()) and nonzero (its output size depends on the data);
    and Tensor.tolist calls, which read a whole tensor back without dispatching an op."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.syncs: list[str] = []
        tolist = torch.Tensor.tolist

        def spy(t):
            self.syncs.append("tolist")
            return tolist(t)

        monkeypatch.setattr(torch.Tensor, "tolist", spy)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (aten._local_scalar_dense.default, aten.nonzero.default, aten.item.default):
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("training", [True, False])
def test_seq_lengths_give_the_same_outputs_without_host_syncs(monkeypatch, training):
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForQuestionAnswering(cfg, unpad=True)
    batch = random_batch(cfg, batch=6, seq=14, seed=7)
    lengths = _lengths(batch)
    with torch.set_grad_enabled(training):
        with SyncSpy(monkeypatch) as spy:
            given = model(**batch, seq_lengths=lengths)
        assert spy.syncs == []
        with SyncSpy(monkeypatch) as spy:
            read = model(**batch)
        assert spy.syncs  # the spy sees the lengths being read back
    for a, b in zip(given, read):
        assert torch.equal(a, b)


def test_forward_runs_on_data_free_tensors_given_the_lengths():
    """On the meta device tensors have no data: any read of a value fails. The unpadded forward
    with seq_lengths runs through (the lengths check becomes a device-side assertion); without
    them it must read the lengths and fails."""
    cfg = tiny_config()
    with torch.device("meta"):
        model = BertForQuestionAnswering(cfg, unpad=True)
    batch = random_batch(cfg, batch=4, seq=12, seed=1)
    lengths = _lengths(batch)
    assert len(set(lengths)) > 1
    on_meta = {k: v.to("meta") for k, v in batch.items()}
    start, end = model(**on_meta, seq_lengths=lengths)
    assert start.shape == end.shape == (4, 12)
    with pytest.raises((NotImplementedError, RuntimeError)):
        model(**on_meta)


def test_padding_need_not_be_a_suffix():
    """Holes anywhere in the mask: the unpadded path (lengths given or not) computes what the
    padded path computes at the real positions, positions counted on the grid as in BERT."""
    cfg = tiny_config()
    padded = BertForQuestionAnswering(cfg, unpad=False).eval()
    unpadded = BertForQuestionAnswering(cfg, unpad=True).eval()
    unpadded.load_state_dict(padded.state_dict())
    batch = random_batch(cfg, batch=4, seq=10, seed=8, min_len=10)
    mask = batch["attention_mask"]
    mask[0, :3] = 0  # left padding
    mask[1, 4:6] = 0  # a hole
    mask[2, ::2] = 0  # every other token
    lengths = _lengths(batch)
    real = mask.bool()
    with torch.no_grad():
        want = padded(**batch)[0][real]
        torch.testing.assert_close(unpadded(**batch)[0][real], want, rtol=0, atol=1e-5)
        torch.testing.assert_close(unpadded(**batch, seq_lengths=lengths)[0][real], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seq_lengths, message", [
    ([8, 8, 8], "disagree with attention_mask"),
    ([8, 8], "must hold 3 lengths"),
    ([8, 8, 13], "must hold 3 lengths in 0..12"),
    ([8.0, 5.0, 3.0], "must hold ints"),
    (torch.tensor([8, 5, 3]), "not a tensor"),
])
def test_bad_seq_lengths_are_data_errors(seq_lengths, message):
    cfg = tiny_config()
    model = BertForQuestionAnswering(cfg, unpad=True)
    batch = random_batch(cfg, batch=3, seq=12, seed=1)
    batch["attention_mask"] = _mask([8, 5, 3], 12)
    with pytest.raises(DataError, match=message):
        model(**batch, seq_lengths=seq_lengths)


def test_seq_lengths_without_attention_mask_is_a_data_error():
    model = BertForQuestionAnswering(tiny_config(), unpad=True)
    with pytest.raises(DataError, match="without attention_mask"):
        model(torch.ones(2, 5, dtype=torch.long), seq_lengths=[5, 5])


# ---- grouped CPU inference ----------------------------------------------------------------------


@pytest.mark.parametrize("unpad", [False, True])
def test_grouped_cpu_inference_equals_one_pass(monkeypatch, unpad):
    """CPU inference encodes groups of sequences (allocator-friendly); with gradients on it
    encodes the batch in one pass. Both give the same outputs."""
    cfg = tiny_config(max_position_embeddings=64)
    model = BertForQuestionAnswering(cfg, unpad=unpad).eval()
    batch = random_batch(cfg, batch=7, seq=20, seed=4)
    monkeypatch.setattr(bert_module, "CPU_GROUP_TOKENS", 40)
    assert not bert_module._encodes_in_groups(batch["input_ids"])  # gradients on
    sizes = _lengths(batch) if unpad else [20] * 7
    groups = bert_module._cpu_inference_groups(sizes)
    assert len(groups) > 2 and groups[0].start == 0 and groups[-1].stop == 7
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))  # consecutive, all covered
    with torch.inference_mode():
        assert bert_module._encodes_in_groups(batch["input_ids"])
        grouped = model(**batch)
        grouped_given = model(**batch, seq_lengths=_lengths(batch))
    with torch.enable_grad():
        one_pass = model(**batch)
    mask = batch["attention_mask"].bool()
    for a, b, c in zip(grouped, grouped_given, one_pass):
        torch.testing.assert_close(a[mask], c.detach()[mask], rtol=1e-5, atol=1e-6)
        assert torch.equal(a, b)


def test_cpu_inference_groups_count_the_tokens_given():
    assert bert_module._cpu_inference_groups([30, 30, 30, 30, 100, 10]) == [slice(0, 6)]  # 230 tokens
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bert_module, "CPU_GROUP_TOKENS", 100)
        groups = bert_module._cpu_inference_groups([30, 30, 30, 30, 100, 10])
        assert groups == [slice(0, 3), slice(3, 4), slice(4, 5), slice(5, 6)]
        assert len(bert_module._cpu_inference_groups([100] * 6)) == 6


# ---- against transformers, and compiled ---------------------------------------------------------


def test_padded_unpadded_and_hf_agree_on_varied_lengths():
    cfg = tiny_config()
    padded = BertForQuestionAnswering(cfg, unpad=False).eval()
    unpadded = BertForQuestionAnswering(cfg, unpad=True).eval()
    unpadded.load_state_dict(padded.state_dict())
    theirs = transformers.BertForQuestionAnswering(hf_config(cfg)).eval()
    theirs.load_state_dict(native_to_hf(padded.state_dict()))
    batch = random_batch(cfg, batch=6, seq=17, seed=5)
    mask = batch["attention_mask"].bool()
    with torch.inference_mode():
        ref = theirs(**batch).start_logits[mask]
        for model in (padded, unpadded):
            torch.testing.assert_close(model(**batch)[0][mask], ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(unpadded(**batch, seq_lengths=_lengths(batch))[0][mask], ref,
                                   rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["padded", "unpadded", "flash"])
def test_compiled_layers_match_eager(path, request):
    """torch.compile'd encoder layers (as training and CUDA inference run them) compute what the
    eager layers compute, forward and backward; the flash path through its CPU reference kernel
    (inductor calls the op as an external kernel)."""
    if path == "flash":
        request.getfixturevalue("flash_in_fp32")
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    eager = BertForQuestionAnswering(cfg, unpad=path != "padded")
    compiled = BertForQuestionAnswering(cfg, unpad=path != "padded")
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_layers()
    batch = random_batch(cfg, batch=4, seq=12, seed=6)
    mask = batch["attention_mask"].bool()
    lengths = {"seq_lengths": _lengths(batch)} if path == "flash" else {}
    for model in (eager, compiled):
        _qa_loss(model, batch, **lengths)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch, **lengths)[0][mask], eager(**batch, **lengths)[0][mask],
                                   rtol=1e-5, atol=1e-5)
    _assert_same_grads(compiled, eager, rtol=1e-4, atol=1e-5)


def test_compile_layers_compiles_each_layer_once():
    model = BertForQuestionAnswering(tiny_config(num_hidden_layers=3))
    layers = list(model.bert.encoder.layers)
    assert not model.layers_compiled and all(layer._compiled_call_impl is None for layer in layers)
    model.compile_layers()
    first = [layer._compiled_call_impl for layer in layers]
    assert model.layers_compiled and all(f is not None for f in first)
    model.compile_layers()
    assert [layer._compiled_call_impl for layer in layers] == first
    assert model.bert.embeddings._compiled_call_impl is None  # only the layers
