"""The random-order GPT against the original code's reference outputs, and properties with known answers."""
import json
import math
import os

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from RandAR.model.generate import CompiledDecoder, DecodeConfig, _generate, parallel_decoding_schedule
from RandAR.model.randar_gpt import RandARTransformer
from RandAR.utils.checkpoint import CheckpointMismatchError, load_model_weights, suggest_config
from RandAR.model.builder import build_randar
from RandAR.utils.compat import canonical_config
from RandAR.utils.config import load_config

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_args(**overrides):
    args = json.load(open(os.path.join(FIX, "randar_tiny_config.json")))["constructor_args"]
    args.update(overrides)
    # the fixture's arguments are the original code's: read them as a config is read
    return canonical_config({"ar_model": {"params": args}})["ar_model"]["params"]


@pytest.fixture(scope="module")
def ref_model():
    model = RandARTransformer(**tiny_args()).eval()
    load_model_weights(model, os.path.join(FIX, "randar_tiny.safetensors"))
    return model


def generate_logits(model, cond, cfg_scales=(1.0, 1.0), num_inference_steps=None, temperature=1.0, top_k=0,
                    top_p=1.0, **kw):
    """model.generate's call, also returning the logits each token was drawn from (the private _generate)."""
    decode = DecodeConfig(tuple(cfg_scales), num_inference_steps, temperature, top_k, top_p)
    return _generate(model, cond, decode, return_logits=True, **kw)


def random_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = RandARTransformer(**tiny_args(**overrides)).eval()
    with torch.no_grad():  # well-separated logits, as in the fixture
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p) + (1.0 if p.ndim == 1 else 0.0))
    return model


# ---- reference fixtures --------------------------------------------------------------------------------
def test_forward_matches_reference(ref_model):
    ref = load_file(os.path.join(FIX, "randar_tiny_forward.safetensors"))
    logits, loss, order = ref_model(ref["idx"], ref["cond"], token_order=ref["token_order"], targets=ref["idx"])
    torch.testing.assert_close(logits, ref["token_logits"], atol=5e-4, rtol=1e-4)
    assert abs(loss.item() - ref["loss"].item()) < 5e-5
    torch.testing.assert_close(ref_model.freqs_cis, ref["freqs_cis"], atol=1e-6, rtol=0)
    assert torch.equal(order, ref["token_order"])


def test_generate_matches_reference_every_case(ref_model):
    ref = load_file(os.path.join(FIX, "randar_tiny_generate.safetensors"))
    meta = json.load(open(os.path.join(FIX, "randar_tiny_generate.json")))
    assert len(meta["cases"]) == 10
    for case in meta["cases"]:
        call, name = case["call"], case["case"]
        ids, logits = generate_logits(ref_model, ref["cond"], token_order=ref["token_order"],
                                      cfg_scales=call["cfg_scales"], num_inference_steps=call["num_inference_steps"],
                                      temperature=1.0, top_k=call["top_k"], top_p=call["top_p"])
        assert torch.equal(ids, ref[f"{name}.result_indices"]), name
        torch.testing.assert_close(logits, ref[f"{name}.step_logits"], atol=5e-4, rtol=1e-4, msg=name)
        assert parallel_decoding_schedule(16, call["num_inference_steps"]) == case["tokens_per_step"]


def test_schedule_matches_reference():
    settings = json.load(open(os.path.join(FIX, "schedule.json")))
    settings = settings["settings"] if isinstance(settings, dict) and "settings" in settings else settings
    assert len(settings) == 11
    for s in settings:
        counts = parallel_decoding_schedule(s["block_size"], s["num_inference_steps"])
        assert counts == s["tokens_per_step"], s
        assert len(counts) == s["steps_executed"] and sum(counts) == s["block_size"]


def _listing(name):
    header, keys = {}, {}
    for line in open(os.path.join(FIX, name)):
        if line.startswith("#"):
            k, _, v = line[1:].partition(":")
            header[k.strip()] = v.strip()
        elif line.strip():
            key, shape, _ = line.rstrip("\n").split("\t")
            keys[key] = tuple(json.loads(shape))
    return header, keys


@pytest.mark.parametrize("config,listing", [
    ("randar_l_0.3b_llamagen.yaml", "keys_randar_l_0.3b_llamagen.txt"),
    ("randar_l_0.3b_maskgit.yaml", "keys_randar_l_0.3b_maskgit.txt"),
    ("randar_xl_0.7b_llamagen.yaml", "keys_randar_xl_0.7b_llamagen.txt"),
    ("randar_xxl_1.4b_llamagen.yaml", "keys_randar_xxl_1.4b_llamagen_INFERRED.txt"),
])
def test_official_configs_match_key_listings(config, listing):
    header, want = _listing(listing)
    cfg = OmegaConf.load(os.path.join(ROOT, "configs", "randar", config))
    model = build_randar(cfg, device="meta")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(want)  # same keys, same order
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == int(header["total_parameters"])


def test_tiny_fixture_loads_strictly_and_suggests_config(ref_model):
    sd = load_file(os.path.join(FIX, "randar_tiny.safetensors"))
    assert set(ref_model.state_dict()) == set(sd)  # no RoPE table, mask or cache in the state dict
    wrong = RandARTransformer(**tiny_args(vocab_size=32))
    with pytest.raises(CheckpointMismatchError) as e:
        load_model_weights(wrong, os.path.join(FIX, "randar_tiny.safetensors"))
    msg = str(e.value)
    assert "randar_tiny.safetensors" in msg and "tok_embeddings.weight" in msg and "[64, 64]" in msg
    assert "configs/randar/randar_tiny.yaml" in msg
    # A DDP/compile-wrapped state dict loads too.
    wrapped = {"module._orig_mod." + k: v for k, v in sd.items()}
    load_model_weights(RandARTransformer(**tiny_args()), wrapped)
    assert suggest_config({k: v for k, v in sd.items() if k != "norm.weight"}) is None


# ---- properties with known answers ---------------------------------------------------------------------
def test_apply_rotary_emb_rotates_each_pair_by_its_angle_eager_and_compiled():
    """Pair (x0, x1) at angle a becomes (x0 cos a - x1 sin a, x0 sin a + x1 cos a), written out per element; the
    eager (complex) and compiled (real) forms agree with it, in float32 and under bfloat16 inputs."""
    from RandAR.model.rope import apply_rotary_emb
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 8, generator=g)
    angles = torch.rand(2, 5, 4, generator=g) * 2 * math.pi
    freqs = torch.stack([angles.cos(), angles.sin()], dim=-1)
    expected = torch.empty_like(x)
    for b, s, h, k in torch.cartesian_prod(*(torch.arange(n) for n in (2, 5, 3, 4))).tolist():
        a, x0, x1 = angles[b, s, k], x[b, s, h, 2 * k], x[b, s, h, 2 * k + 1]
        expected[b, s, h, 2 * k] = x0 * a.cos() - x1 * a.sin()
        expected[b, s, h, 2 * k + 1] = x0 * a.sin() + x1 * a.cos()
    torch.testing.assert_close(apply_rotary_emb(x, freqs), expected)
    torch.testing.assert_close(torch.compile(apply_rotary_emb, backend="eager", fullgraph=True)(x, freqs), expected)
    out_bf16 = apply_rotary_emb(x.bfloat16(), freqs)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), expected, atol=2e-2, rtol=2e-2)


def test_cached_steps_equal_teacher_forcing_with_cfg():
    """One token per step: every step's logits equal one teacher-forced pass over the finished sequence
    (the class and the null-class pass combined with the linear CFG scale of that step)."""
    model = random_model(1)
    B, N = 3, model.block_size
    cond = torch.tensor([1, 4, 7])
    order = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(i)) for i in range(B)])
    ids, step_logits = generate_logits(model, cond, token_order=order, cfg_scales=(1.0, 3.0), num_inference_steps=-1,
                                       temperature=1.0, top_k=0)
    c, _, _ = model(ids, cond, token_order=order)
    u, _, _ = model(ids, torch.full_like(cond, model.num_classes), token_order=order)
    scale = (1.0 + 2.0 * torch.arange(N) / N).view(1, N, 1)
    torch.testing.assert_close(step_logits, u + scale * (c - u), atol=1e-4, rtol=1e-4)


def test_parallel_decoding_with_known_prefix_equals_teacher_forcing():
    """Several tokens per step and a known prefix: a step's first query sees exactly the teacher-forced
    context, so its logits equal the teacher-forced ones; the known tokens come back unchanged."""
    model = random_model(2)
    B, N, K = 2, model.block_size, 5
    cond = torch.tensor([3, 9])
    order = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(10 + i)) for i in range(B)])
    known = torch.randint(0, model.vocab_size, (B, K))
    ids, step_logits = generate_logits(model, cond, token_order=order, num_inference_steps=4, known_tokens=known)
    assert torch.equal(ids.gather(1, order[:, :K]), known)
    tf, _, _ = model(ids, cond, token_order=order)
    counts = parallel_decoding_schedule(N - K, 4)
    firsts = [K + sum(counts[:i]) for i in range(len(counts))]
    torch.testing.assert_close(step_logits[:, firsts], tf[:, firsts], atol=1e-4, rtol=1e-4)


def _position_oracle(model):
    """Rewire a model so that its greedy prediction at query q_i is the raster index of target position o_i:
    residual branches off, so the logits are output(norm(q_i)); output row p = norm(q of position p)."""
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.norm.weight.fill_(1.0)
        all_pos = torch.arange(model.block_size)[None]
        q = model.position_instruction_tokens(model.freqs_cis[model.cls_token_num:][all_pos])[0]
        model.output.weight.zero_()
        model.output.weight[: model.block_size] = model.norm(q)
    return model


@pytest.mark.parametrize("steps", [-1, 6, 3])
def test_ids_come_back_in_raster_order_for_any_permutation(steps):
    model = _position_oracle(random_model(3))
    B, N = 4, model.block_size
    order = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(20 + i)) for i in range(B)])
    ids = model.generate(torch.tensor([0, 1, 2, 3]), token_order=order, cfg_scales=(1.0, 1.0),
                         num_inference_steps=steps, top_k=1)
    assert torch.equal(ids, torch.arange(N).expand(B, N))


def test_no_cache_left_after_generate_and_training_still_works():
    model = random_model(4)
    keys = set(model.state_dict())
    model.generate(torch.tensor([1, 2]), cfg_scales=(2.0, 2.0), num_inference_steps=4)
    assert set(model.state_dict()) == keys
    assert all(layer.attention.kv_cache is None for layer in model.layers)
    model.train()
    _, loss, _ = model(torch.randint(0, 64, (2, 16)), torch.tensor([1, 2]), targets=torch.randint(0, 64, (2, 16)))
    loss.backward()
    assert math.isfinite(loss.item())


def test_grouped_query_attention_generates_and_matches_teacher_forcing():
    model = random_model(5, n_kv_head=2)
    assert model.layers[0].attention.wqkv.weight.shape[0] == (4 + 2 * 2) * 16
    cond = torch.tensor([5, 6])
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    ids, logits = generate_logits(model, cond, token_order=order, num_inference_steps=-1)
    tf, _, _ = model(ids, cond, token_order=order)
    torch.testing.assert_close(logits, tf, atol=1e-4, rtol=1e-4)


def test_cfg_without_null_class_is_a_clear_error():
    """Checked once, where the tools' settings meet the model (check_for_model: the user's message); generate
    only asserts it."""
    from types import SimpleNamespace

    from RandAR.sampling.inputs import check_for_model
    model = random_model(6, class_dropout_prob=0.0)
    assert model.cls_embedding.embedding_table.num_embeddings == 10
    tokenizer = SimpleNamespace(downsample_factor=2)
    with pytest.raises(ValueError, match="null class.*use --cfg-scales 1.0,1.0"):
        check_for_model(model, tokenizer, DecodeConfig((1.0, 4.0)), None)
    check_for_model(model, tokenizer, DecodeConfig((1.0, 1.0)), None)  # no guidance: fine
    with pytest.raises(AssertionError, match="null class"):
        model.generate(torch.tensor([1]), cfg_scales=(1.0, 4.0))
    model.generate(torch.tensor([1]), cfg_scales=(1.0, 1.0))


def test_one_entry_point_with_a_guidance_object():
    """model.generate (the original's API) is generate() with class_cfg; generate.py does not import the model
    (no import cycle); guidance with a null branch on a model without the null class fails before decoding."""
    import ast
    from RandAR.model import generate as generate_module
    from RandAR.model.generate import Guidance, class_cfg

    model = random_model(9)
    cond, order = torch.tensor([1, 2]), torch.stack([torch.randperm(16), torch.randperm(16)])
    seeds = torch.tensor([5, 6])
    ref = model.generate(cond, token_order=order, cfg_scales=(1.0, 3.0), num_inference_steps=5, seeds=seeds)
    ids = generate_module.generate(model, cond, generate_module.DecodeConfig((1.0, 3.0), 5), token_order=order,
                                   seeds=seeds)
    assert torch.equal(ids, ref)
    model.num_inference_steps = 5  # None: the model's default steps
    assert torch.equal(generate_module.generate(model, cond, token_order=order, seeds=seeds,
                                                guidance=class_cfg(cond, (1.0, 3.0), 10)), ref)
    tree = ast.parse(open(generate_module.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "RandAR.model.randar_gpt" not in imported
    no_null = random_model(6, class_dropout_prob=0.0)
    two = Guidance([cond, cond], lambda logits, fraction: logits[0])
    with pytest.raises(AssertionError, match="null class"):
        generate_module.generate(no_null, cond, guidance=two)


def test_official_inert_keys_are_dropped_where_the_config_is_read(tmp_path):
    """The official configs' caption_dim, max_batch_size, max_seq_len and zero_class_qk are not model arguments:
    reading the config drops them (RandAR.utils.compat), so the model and the builder never see them."""
    with pytest.raises(TypeError, match="caption_dim"):
        RandARTransformer(**tiny_args(), caption_dim=2048)
    cfg = OmegaConf.load(os.path.join(ROOT, "configs", "randar", "randar_xl_0.7b_llamagen.yaml"))
    cfg.ar_model.params.zero_class_qk = True
    cfg.ar_model.params.caption_dim = 2048
    OmegaConf.save(cfg, tmp_path / "official.yaml")
    read = load_config(str(tmp_path / "official.yaml"))
    assert "zero_class_qk" not in read.ar_model.params and "caption_dim" not in read.ar_model.params
    assert build_randar(read, device="meta").dim == cfg.ar_model.params.dim


def test_bad_inputs_are_rejected():
    model = random_model(7)
    with pytest.raises(ValueError, match="class ids"):
        model.generate(torch.tensor([11]))
    with pytest.raises(ValueError, match="permutation"):
        model.generate(torch.tensor([1]), token_order=torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="known token ids"):
        model.generate(torch.tensor([1]), token_order=torch.arange(16)[None], known_tokens=torch.tensor([[64]]))


def test_training_orders_are_permutations_and_label_dropout_uses_null_row():
    model = random_model(8)
    order = model.random_token_order(64, "cpu")
    assert torch.equal(order.sort(1).values, torch.arange(16).expand(64, 16))
    assert len({tuple(o.tolist()) for o in order}) == 64  # drawn per sample
    raster = RandARTransformer(**tiny_args(position_order="raster"))
    assert torch.equal(raster.random_token_order(2, "cpu"), torch.arange(16).expand(2, 16))
    model.train()
    model.cls_embedding.dropout_prob = 1.0
    emb = model.cls_embedding(torch.tensor([1, 2]), train=True)
    torch.testing.assert_close(emb[:, 0], model.cls_embedding.embedding_table.weight[10].expand(2, -1))


def test_seeded_sampling_is_batch_independent():
    model = random_model(9)
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    cond, seeds = torch.tensor([1, 2, 3]), torch.tensor([100, 200, 300])
    together = model.generate(cond, token_order=order, cfg_scales=(1.0, 3.0), num_inference_steps=6, seeds=seeds)
    alone = model.generate(cond[1:2], token_order=order[1:2], cfg_scales=(1.0, 3.0), num_inference_steps=6,
                           seeds=seeds[1:2])
    assert torch.equal(together[1:2], alone)
    other = model.generate(cond, token_order=order, cfg_scales=(1.0, 3.0), num_inference_steps=6, seeds=seeds + 1)
    assert not torch.equal(together, other)


def test_bf16_smoke():
    model = random_model(10).to(torch.bfloat16)
    ids = model.generate(torch.tensor([1, 2]), cfg_scales=(1.0, 4.0), num_inference_steps=5, top_k=10, top_p=0.9)
    assert ids.shape == (2, 16) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 64
    model.train()
    _, loss, _ = model(ids, torch.tensor([1, 2]), targets=ids)
    assert math.isfinite(loss.item())
    assert model.freqs_cis.dtype == torch.float32  # RoPE stays float32 under a bf16 model


def test_cpu_bf16_generation_keeps_a_float32_cache_with_the_same_logits(monkeypatch):
    """A bf16 model on CPU attends in float32: its KV cache is float32 (no upcast of the whole cache per step),
    holding the same bf16 keys and values exactly, so tokens and logits equal those of a bf16 cache."""
    model = random_model(13).to(torch.bfloat16)
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    cond, seeds = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    real, dtypes = RandARTransformer.setup_caches, []

    def recording(self, batch, max_len, dtype, device):
        caches = real(self, batch, max_len, dtype, device)
        dtypes.append(caches[0].k.dtype)
        return caches

    def bf16_cache(self, batch, max_len, dtype, device):
        caches = real(self, batch, max_len, dtype, device)
        for c in caches:
            c.k, c.v = c.k.bfloat16(), c.v.bfloat16()
        return caches

    kw = dict(cfg_scales=(1.0, 3.0), num_inference_steps=5, top_k=8, token_order=order, seeds=seeds)
    monkeypatch.setattr(RandARTransformer, "setup_caches", recording)
    ids, logits = generate_logits(model, cond, **kw)
    assert dtypes == [torch.float32]
    monkeypatch.setattr(RandARTransformer, "setup_caches", bf16_cache)
    ref, ref_logits = generate_logits(model, cond, **kw)
    assert torch.equal(ids, ref) and torch.equal(logits, ref_logits)


def test_cpu_bf16_autocast_matches_reference_and_attends_in_float32(ref_model, monkeypatch):
    """CPU bf16 training (the quickstart's) stays close to the float32 reference; attention itself runs in
    float32 there, because CPU's bf16 attention kernels are slower."""
    import RandAR.model.randar_gpt as gpt
    seen = []
    real_sdpa = gpt.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kw):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return real_sdpa(q, k, v, **kw)

    monkeypatch.setattr(gpt.F, "scaled_dot_product_attention", recording_sdpa)
    ref = load_file(os.path.join(FIX, "randar_tiny_forward.safetensors"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss, _ = ref_model(ref["idx"], ref["cond"], token_order=ref["token_order"], targets=ref["idx"])
        h = ref_model.tok_embeddings(ref["idx"][:, :2])
        assert ref_model.layers[0].attention.wqkv(h).dtype == torch.bfloat16  # projections do run in bf16
    torch.testing.assert_close(logits.float(), ref["token_logits"], atol=0.5, rtol=0.05)  # bf16 rounding
    assert abs(loss.item() - ref["loss"].item()) < 0.05
    assert seen and all(s == (torch.float32, False) for s in seen)


def test_static_shape_and_compiled_decoding_match_the_dynamic_path():
    """Fixed-size pieces over the whole cache (the torch.compile path) give the same tokens; pieces smaller than
    a step's chunk (chunk_size=3) too. The compiled run uses inductor in CUDA's mode (CUDA graphs, skipped on CPU)."""
    model = random_model(11)
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    cond, seeds, known = torch.tensor([1, 2, 3]), torch.tensor([7, 8, 9]), torch.randint(0, 64, (3, 3))
    for kw in [dict(num_inference_steps=6, cfg_scales=(1.0, 3.0)), dict(num_inference_steps=-1),
               dict(num_inference_steps=4, known_tokens=known, cfg_scales=(2.0, 2.0)),
               dict(num_inference_steps=2, chunk_size=3)]:
        ref, ref_logits = generate_logits(model, cond, token_order=order, seeds=seeds,
                                          **{k: v for k, v in kw.items() if k != "chunk_size"})
        ids, logits = generate_logits(model, cond, token_order=order, seeds=seeds, static_shapes=True, **kw)
        assert torch.equal(ids, ref)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    ref = model.generate(cond, token_order=order, seeds=seeds, num_inference_steps=6, cfg_scales=(1.0, 3.0))
    ids = model.generate(cond, token_order=order, seeds=seeds, num_inference_steps=6, cfg_scales=(1.0, 3.0),
                         decoder=CompiledDecoder(model, mode="reduce-overhead"))
    assert torch.equal(ids, ref)


def test_static_cache_under_cpu_bf16_autocast_matches_the_dynamic_path():
    """Under autocast k/v come out bf16 while the cache has the weights' dtype (float32): the static path's
    index_copy_ must cast them as the dynamic path's slice assignment does."""
    model = random_model(12)
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    cond = torch.tensor([4, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ref_logits = generate_logits(model, cond, token_order=order, num_inference_steps=6,
                                          cfg_scales=(1.0, 3.0), top_k=1)
        ids, logits = generate_logits(model, cond, token_order=order, num_inference_steps=6, cfg_scales=(1.0, 3.0),
                                      top_k=1, static_shapes=True)
    assert model.layers[0].attention.kv_cache is None
    torch.testing.assert_close(logits, ref_logits, atol=0.05, rtol=0.02)  # bf16 rounding of different shapes
    assert torch.equal(ids, ref)


def _eager_compile(monkeypatch, modes):
    """torch.compile through dynamo with the "eager" backend (no inductor build: seconds, not minutes); dynamo's
    guards and recompiles, which these tests are about, are the real ones. Records the modes asked for."""
    real_compile = torch.compile

    def compile_eager(fn, dynamic=None, mode=None, fullgraph=False):
        modes.append(mode)
        return real_compile(fn, dynamic=dynamic, fullgraph=fullgraph, backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eager)
    torch._dynamo.reset()


def test_static_decoding_has_one_shape_per_batch_whatever_the_step_count(monkeypatch):
    """Every static piece has the same shape for any step count or known prefix, so the compiled step is
    built once per batch size; timed calls at other step counts then never recompile."""
    import torch._dynamo
    model = random_model(13)
    shapes = set()
    real_step = model.decode_step

    def recording_step(x, f, pos, num_logits=None):
        if num_logits is None:  # a static piece (the eager prefill reads its query rows only)
            shapes.add((tuple(x.shape), tuple(f.shape), tuple(pos.shape),
                        tuple(model.layers[0].attention.kv_cache.k.shape)))
        return real_step(x, f, pos, num_logits)
    monkeypatch.setattr(model, "decode_step", recording_step)
    cond, known = torch.tensor([1, 2, 3]), torch.randint(0, 64, (3, 5))
    for steps, known_tokens in [(-1, None), (6, None), (3, None), (2, known)]:
        _generate(model, cond, DecodeConfig((1.0, 3.0), steps), known_tokens=known_tokens, static_shapes=True)
    assert len(shapes) == 1, shapes
    monkeypatch.undo()

    modes = []
    _eager_compile(monkeypatch, modes)
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    seeds = torch.tensor([7, 8, 9])
    decoder = CompiledDecoder(model)
    model.generate(cond, token_order=order, seeds=seeds, num_inference_steps=8, decoder=decoder)  # warm-up
    with torch._dynamo.config.patch(error_on_recompile=True):
        for steps in (-1, 6, 3):
            ref = model.generate(cond, token_order=order, seeds=seeds, num_inference_steps=steps)
            assert torch.equal(model.generate(cond, token_order=order, seeds=seeds, num_inference_steps=steps,
                                              decoder=decoder), ref)
    assert modes == ["default"]  # built once, in the decoder's default mode on CPU


def test_compiled_calls_reuse_one_kv_cache_per_batch_and_length(monkeypatch):
    """CUDA graphs replay on fixed addresses: a CompiledDecoder keeps one cache per (batch, length) and reuses it,
    also when calls alternate between two grids (resolution extrapolation), without recompiling; eager calls
    keep nothing. Kept caches are the decoder's, no buffers or attributes of the model (checkpoints, EMA and DDP
    never see them), and "reduce-overhead" (CUDA graphs, skipped on CPU) gives the eager path's tokens."""
    import torch._dynamo
    from RandAR.model.rope import precompute_freqs_cis_2d
    modes = []
    _eager_compile(monkeypatch, modes)
    model = random_model(14)
    seen = []
    real_attach = model.attach_caches

    def recording_attach(caches):
        real_attach(caches)
        if caches is not None:
            seen.append(caches[0].k.data_ptr())
    monkeypatch.setattr(model, "attach_caches", recording_attach)
    keys, n_buffers, attrs = set(model.state_dict()), len(list(model.buffers())), set(model.__dict__)
    cond, seeds = torch.tensor([1, 2]), torch.tensor([1, 2])
    big = precompute_freqs_cis_2d(5, model.head_dim, model.rope_base, model.cls_token_num)
    big_order = torch.stack([torch.randperm(25, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    calls = [dict(), dict(freqs_cis=big, token_order=big_order)]
    ref = [model.generate(cond, num_inference_steps=6, seeds=seeds, generator=torch.Generator().manual_seed(0), **kw)
           for kw in calls]
    assert set(model.__dict__) == attrs and model.layers[0].attention.kv_cache is None
    seen.clear()
    decoder = CompiledDecoder(model, mode="reduce-overhead")
    for _ in range(2):
        with torch._dynamo.config.patch(error_on_recompile=bool(seen)):
            for r, kw in zip(ref, calls):
                ids = model.generate(cond, num_inference_steps=6, seeds=seeds, decoder=decoder,
                                     generator=torch.Generator().manual_seed(0), **kw)
                assert torch.equal(ids, r)
    assert seen[:2] == seen[2:] and seen[0] != seen[1]
    assert len(decoder.caches) == 2 and modes == ["reduce-overhead"]
    assert all(layer.attention.kv_cache is None for layer in model.layers)
    assert set(model.state_dict()) == keys and len(list(model.buffers())) == n_buffers
    assert set(model.__dict__) == attrs  # nothing compiled or cached in the model


def test_rope_table_moves_with_the_model_and_stays_float32():
    """model.to(device) moves the RoPE table once (the compiled training forward must not move or reassign it),
    a dtype cast leaves it float32, and it stays out of the state dict."""
    model = random_model(15)
    keys = set(model.state_dict())
    model.to(torch.bfloat16)
    assert model.freqs_cis.dtype == torch.float32
    model.to("meta")
    assert model.freqs_cis.device.type == "meta" and model.freqs_cis.dtype == torch.float32
    assert set(model.state_dict()) == keys
    with torch.device("meta"):  # built without memory, then materialised: the table is computed, not copied
        model = RandARTransformer(**tiny_args())
    model.to_empty(device="cpu")
    torch.testing.assert_close(model.freqs_cis, random_model(15).freqs_cis, atol=0, rtol=0)


def test_compile_flag_of_the_sampling_tools_reaches_generate(monkeypatch, tmp_path):
    """--compile of sample_c2i.py (add_sampling_args: also the CFG search and resolution extrapolation) and of
    inpaint/outpaint (add_editing_args) runs the compiled static decode step; the images stay the same."""
    import glob

    import numpy as np
    from PIL import Image

    from helpers import load_script
    modes = []
    _eager_compile(monkeypatch, modes)
    weights = ["--config", os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml"),
               "--gpt-ckpt", os.path.join(FIX, "randar_tiny.safetensors"),
               "--vq-ckpt", os.path.join(FIX, "vq_tiny.safetensors"), "--cfg-scales", "1.0,3.0"]
    sample_c2i = load_script("sample_c2i.py")
    packs = []
    for name, extra in [("eager", []), ("compiled", ["--compile"])]:
        sample_c2i.main(weights + ["--exp-name", "t", "--num-fid-samples", "4", "--per-proc-batch-size", "2",
                                   "--sample-dir", str(tmp_path / name), *extra])
        assert modes == ([] if name == "eager" else ["default"])
        (pack,) = glob.glob(str(tmp_path / name / "*.npz"))
        packs.append(np.load(pack)["arr_0"])
    assert np.array_equal(*packs)

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.repeat(np.array([0, 255], dtype=np.uint8), 4)[None].repeat(8, 0)).save(tmp_path / "mask.png")
    inpaint = load_script("tools/inpaint.py")
    images = []
    for name, extra in [("eager", []), ("compiled", ["--compile"])]:
        modes.clear()
        inpaint.main(weights + ["--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                                "--class-id", "3", "--num-samples", "2", "--output-dir", str(tmp_path / f"in_{name}"),
                                *extra])
        assert modes == ([] if name == "eager" else ["default"])
        images.append(np.asarray(Image.open(tmp_path / f"in_{name}" / "in_inpaint_001.png")))
    assert np.array_equal(*images)
