"""Tokenizers against the original code's fixtures (tests/fixtures/REFERENCE_README.md, sections 3-5)."""
import json
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from RandAR.model.tokenizers.maskgit_vqgan import MaskGITTokenizer
from RandAR.model.tokenizers.llamagen_vq import VQModel
from RandAR.model.tokenizers import build_tokenizer, resize_square
from RandAR.utils.checkpoint import CheckpointMismatchError
from RandAR.utils.compat import canonical_target
from RandAR.utils.config import instantiate_from_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
CONFIGS = os.path.join(ROOT, "configs", "tokenization")
TOL = dict(atol=1e-4, rtol=1e-4)


def fixture_model(name, cls):
    args = json.load(open(os.path.join(FIX, f"{name}.json")))["constructor_args"]
    cfg = {"target": f"{cls.__module__}.{cls.__name__}", "params": args}
    model = build_tokenizer(cfg, os.path.join(FIX, f"{name}.safetensors"))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float16 file, float32 model
    return model, load_file(os.path.join(FIX, f"{name}_io.safetensors"))


@pytest.fixture(scope="module")
def vq():
    return fixture_model("vq_tiny", VQModel)


@pytest.fixture(scope="module")
def maskgit():
    return fixture_model("maskgit_tiny", MaskGITTokenizer)


def assert_uint8_close(got, want):
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8 and got.shape == tuple(want.shape)
    assert np.abs(got.astype(int) - want.numpy().astype(int)).max() <= 1


def test_vq_matches_original(vq):
    model, io = vq
    x = io["images"]
    torch.testing.assert_close(model.quant_conv(model.encoder(x)), io["encode_latent"], **TOL)
    quant, _, info = model.encode(x)
    torch.testing.assert_close(quant, io["encode_quant"], **TOL)
    assert torch.equal(info[2], io["encode_indices"])  # encode keeps the original's flat layout
    idx = model.encode_indices(x)
    assert idx.dtype == torch.long and torch.equal(idx, io["encode_indices"].view(2, 256))

    codes = io["codes"]
    torch.testing.assert_close(model.decode_code(codes, (2, 8, 16, 16)), io["decode_code"], **TOL)
    torch.testing.assert_close(model.decode_codes(codes), io["decode_code"], **TOL)
    torch.testing.assert_close(model.decode_codes(codes.view(2, 16, 16)), io["decode_code"], **TOL)
    torch.testing.assert_close(resize_square(io["decode_code"], 48), io["decode_resized_float"], **TOL)
    assert_uint8_close(model.decode_codes_to_img(codes, 32), io["img_native"])
    assert_uint8_close(model.decode_codes_to_img(codes, 48), io["img_tgt"])


def test_maskgit_matches_original(maskgit):
    model, io = maskgit
    x = io["images"]
    latent = model.encoder(x)
    torch.testing.assert_close(latent, io["encode_latent"], **TOL)
    torch.testing.assert_close(model.quantize(latent)[0], io["encode_quant"], **TOL)
    idx = model.encode_indices(x)
    assert idx.dtype == torch.long and torch.equal(idx, io["encode_indices"])

    codes = io["codes"]
    unclamped = model.decoder(model.quantize.get_codebook_entry(codes))
    torch.testing.assert_close(unclamped, io["decode_unclamped"], **TOL)
    torch.testing.assert_close(model.decode(codes), io["decode"], **TOL)
    torch.testing.assert_close(resize_square(io["decode"], 48), io["decode_resized_float"], **TOL)
    assert_uint8_close(model.decode_codes_to_img(codes, 32), io["img_native"])
    assert_uint8_close(model.decode_codes_to_img(codes, 48), io["img_tgt"])


def test_common_interface(vq, maskgit):
    images_01 = torch.rand(1, 3, 32, 32)
    for model, lo, hi in ((vq[0], -1.0, 1.0), (maskgit[0], 0.0, 1.0)):
        assert type(model).pixel_range == (lo, hi)
        assert model.codebook_size == 64 and model.downsample_factor == 2
        x = model.preprocess(images_01)
        assert x.min() >= lo and x.max() <= hi
        torch.testing.assert_close(x, lo + (hi - lo) * images_01)
        codes = model.encode_indices(x)
        assert codes.shape == (1, 256) and int(codes.max()) < model.codebook_size
        assert model.decode_codes(codes).shape == (1, 3, 32, 32)


def read_listing(path):
    header, rows = {}, []
    for line in open(path):
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            header[key.strip()] = value.strip()
        elif line.strip():
            key, shape, dtype = line.rstrip("\n").split("\t")
            rows.append((key, tuple(json.loads(shape)), dtype))
    return header, rows


@pytest.mark.parametrize("name", ["llamagen", "maskgit"])
def test_official_keys_and_shapes(name):
    header, rows = read_listing(os.path.join(FIX, f"keys_tokenizer_{name}.txt"))
    cfg = OmegaConf.load(os.path.join(CONFIGS, f"{name}.yaml")).model
    assert json.loads(header["constructor params"]) == OmegaConf.to_container(cfg.params)
    with torch.device("meta"):
        model = instantiate_from_config(cfg)
    got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    assert got == rows
    assert sum(p.numel() for p in model.parameters()) == int(header["total_parameters"])
    assert model.downsample_factor == 16


def test_legacy_targets_still_build(tmp_path):
    """Configs, runs and codes manifests written before the tokenizers moved into RandAR/model/tokenizers/ name
    the old module paths; read as configs are read, they build the same classes."""
    cfg = OmegaConf.load(os.path.join(ROOT, "tests", "configs", "tiny_vq.yaml"))
    cfg.model.target = "RandAR.model.tokenizer.VQModel"
    OmegaConf.save(cfg, tmp_path / "old.yaml")
    assert type(instantiate_from_config(load_config(str(tmp_path / "old.yaml")).model)) is VQModel
    assert canonical_target("RandAR.model.maskgit_tokenizer.MaskGITTokenizer") == \
        "RandAR.model.tokenizers.maskgit_vqgan.MaskGITTokenizer"
    assert canonical_target("RandAR.model.randar_gpt.RandARTransformer") == "RandAR.model.randar_gpt.RandARTransformer"
    for name in ("llamagen", "maskgit"):  # the shipped configs name the current paths
        target = OmegaConf.load(os.path.join(CONFIGS, f"{name}.yaml")).model.target
        assert canonical_target(target) == target and target.startswith("RandAR.model.tokenizers.")


def test_tiny_config_builds():
    model = instantiate_from_config(OmegaConf.load(os.path.join(ROOT, "tests", "configs", "tiny_vq.yaml")).model)
    codes = model.encode_indices(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert codes.shape == (2, (32 // model.downsample_factor) ** 2)
    assert model.decode_codes_to_img(codes, 32).shape == (2, 32, 32, 3)


def test_llamagen_style_torch_file_and_mismatch(vq, tmp_path):
    model, io = vq
    cfg = {"target": "RandAR.model.tokenizers.llamagen_vq.VQModel",
           "params": json.load(open(os.path.join(FIX, "vq_tiny.json")))["constructor_args"]}
    path = str(tmp_path / "vq.pt")
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = build_tokenizer(cfg, path)
    assert not loaded.training
    assert torch.equal(loaded.encode_indices(io["images"]), model.encode_indices(io["images"]))

    wrong = dict(cfg, params=dict(cfg["params"], codebook_size=32))
    with pytest.raises(CheckpointMismatchError, match="quantize.embedding.weight"):
        build_tokenizer(wrong, path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_tokenizer(cfg, str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("cls", [VQModel, MaskGITTokenizer])
def test_training_step(cls):
    torch.manual_seed(0)
    if cls is VQModel:
        model = VQModel(codebook_size=64, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2], z_channels=32,
                        base_channels=32, num_res_blocks=1, norm_groups=8, entropy_loss_ratio=0.1)
    else:
        model = MaskGITTokenizer(channel_mult=[1, 2], num_resolutions=2, hidden_channels=32, num_res_blocks=1,
                                 z_channels=16, embedding_dim=16, num_embeddings=64)
    model.train()
    x = model.preprocess(torch.rand(2, 3, 16, 16))
    rec, losses = model(x)
    assert rec.shape == x.shape
    quantizer_loss = sum(losses[:3]) if cls is VQModel else losses
    loss = (rec - x).abs().mean() + quantizer_loss
    loss.backward()
    assert torch.isfinite(loss)
    for p in (model.encoder.conv_in.weight, model.decoder.conv_out.weight, model.quantize.embedding.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    if cls is VQModel:
        assert all(torch.isfinite(t) for t in losses[:3]) and losses.entropy_loss != 0
        # The usage window starts as zeros (code 0 counts as seen, as in the original) and now holds this step's
        # codes: the codes the tokenizer assigns to x.
        with torch.no_grad():
            codes = set(model.encode_indices(x).flatten().tolist())
        assert losses.codebook_usage == len(codes | {0}) / 64
        assert set(model.quantize.codebook_used[-2 * 64:].long().tolist()) == codes  # 2 images x 8x8 codes


def test_out_of_range_codes_are_a_clear_error():
    from RandAR.model.tokenizers.maskgit_vqgan import MaskGITTokenizer
    from RandAR.model.tokenizers.llamagen_vq import VQModel

    vq = VQModel(codebook_size=64, codebook_embed_dim=8, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                 z_channels=32, base_channels=32, num_res_blocks=1)
    mg = MaskGITTokenizer(channel_mult=[1, 2], num_resolutions=2, hidden_channels=32, z_channels=16,
                          num_embeddings=64, embedding_dim=16)
    for tok in (vq, mg):
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 63\]"):
            tok.decode_codes_to_img(torch.full((1, 16), 64), 8)


def test_code_lookup_is_float32_under_bf16_autocast():
    """bfloat16 distances would pick a wrong code for near ties; under autocast the lookup still matches the
    float32 one exactly (the tokenizer trainer's train.bf16=true relies on it)."""
    torch.manual_seed(0)
    vq = VQModel(codebook_size=512, codebook_embed_dim=8, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                 z_channels=32, base_channels=32, num_res_blocks=1)
    z = torch.randn(4, 8, 32, 32).bfloat16()  # as the encoder hands it over under autocast
    _, _, (_, _, want) = vq.quantize(z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, losses, (_, _, got) = vq.quantize(z)
    assert z_q.dtype == torch.float32 and losses.vq_loss.dtype == torch.float32
    assert torch.equal(got, want)
