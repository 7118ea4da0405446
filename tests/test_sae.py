"""The SAE model, its activation rules and its file formats (ours, SAELens's, sparsify's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from saestab import io
from saestab.sae import (
    ARCHITECTURES,
    SAE,
    SAEConfig,
    batch_topk_activation,
    fold_input_scale,
    load_sae,
    sae_from_tensors,
    save_sae,
    topk_activation,
)

D_IN, D_SAE, K = 8, 24, 3


def random_tensors(d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0,
                   threshold: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if threshold:
        t["threshold"] = torch.rand(d_sae, generator=g)
    return t


def make_sae(arch: str, seed: int = 0) -> SAE:
    cfg = SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE,
                    k=K if arch in ("topk", "batchtopk", "matryoshka") else None,
                    model_name="toy", hook_name="blocks.1.hook_resid_post",
                    recipe={"lr": 1e-3, "groups": [8, 16]}, seeds={"init_seed": seed})
    return sae_from_tensors(cfg, random_tensors(seed=seed,
                                                threshold=arch in ("batchtopk", "jumprelu",
                                                                   "matryoshka")))


def inputs(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip(tmp_path: Path, arch: str) -> None:
    sae = make_sae(arch)
    save_sae(sae, tmp_path / "sae")
    assert (tmp_path / "sae" / "sae_weights.safetensors").is_file()
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    for key in ("architecture", "d_in", "d_sae", "hook_name", "model_name", "dtype", "device",
                "apply_b_dec_to_input", "normalize_activations", "recipe", "seeds"):
        assert key in cfg
    assert cfg["normalize_activations"] == "none"
    back = load_sae(tmp_path / "sae")
    assert back.cfg == sae.cfg
    for name, t in sae.state_tensors().items():
        assert torch.equal(t, back.state_tensors()[name])
    x = inputs()
    assert torch.equal(sae.encode(x), back.encode(x))
    assert torch.equal(sae(x), back(x))
    # saving again over an existing directory replaces it
    save_sae(make_sae(arch, seed=5), tmp_path / "sae")
    assert torch.equal(load_sae(tmp_path / "sae").W_dec, make_sae(arch, seed=5).W_dec)


def test_encode_rules_match_definitions() -> None:
    x = inputs()
    t = random_tensors()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    relu = make_sae("relu")
    assert torch.allclose(relu.encode(x), torch.relu(pre))
    topk = make_sae("topk")
    f = topk.encode(x)
    assert ((f > 0).sum(1) <= K).all()
    # exactly the k largest positive pre-activations survive, with their values
    kth = pre.topk(K, dim=1).values[:, -1:]
    expect = torch.where((pre >= kth) & (pre > 0), pre, torch.zeros(()))
    assert torch.allclose(f, expect)
    for arch in ("jumprelu", "batchtopk", "matryoshka"):
        f = make_sae(arch).encode(x)
        assert torch.allclose(f, torch.where(pre > t["threshold"], pre, torch.zeros(())))
    # decode is W_dec^T f + b_dec
    f = relu.encode(x)
    assert torch.allclose(relu.decode(f), f @ t["W_dec"] + t["b_dec"])
    # leading dimensions pass through
    assert relu.encode(x.reshape(4, 16, D_IN)).shape == (4, 16, D_SAE)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encode_sparse_is_the_dense_code(arch: str) -> None:
    sae = make_sae(arch)
    x = inputs(200)
    for shift in (0.0, 8.0):  # with b_enc lowered, TopK also selects negative pre-activations
        sae.b_enc.data -= shift
        code = sae.encode_sparse(x)
        assert code.layout == torch.sparse_csr and code.shape == (200, D_SAE)
        dense = sae.encode(x)
        assert torch.equal(code.to_dense(), dense)
        # every active entry is in the CSR structure (explicit zeros may be there too)
        assert int((code.values() > 0).sum()) == int((dense > 0).sum())
        assert torch.allclose(sae.decode(code), sae.decode(dense), atol=1e-5)
    assert (dense == 0).all(1).any()  # rows with nothing active were seen
    with pytest.raises(ValueError, match="batch, d_in"):
        sae.encode_sparse(x.reshape(20, 10, D_IN))


def test_activation_helpers() -> None:
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(2, 10, 30, generator=g)
    f = topk_activation(pre, 4)
    assert ((f > 0).sum(-1) <= 4).all() and ((f > 0).sum(-1) == 4).float().mean() > 0.9
    fb = batch_topk_activation(pre, 4)
    # per leading slice, exactly 4 * B entries are kept (all are positive here)
    assert ((fb > 0).flatten(1).sum(1) == 40).all()
    kept_min = torch.where(fb > 0, fb, torch.inf).flatten(1).amin(1)
    dropped_max = torch.where(fb > 0, -torch.inf, pre).flatten(1).amax(1)
    assert (kept_min >= dropped_max).all()


def test_decoder_directions_are_unit_float32() -> None:
    sae = make_sae("topk")
    dirs = sae.decoder_directions()
    assert dirs.dtype == torch.float32 and dirs.shape == (D_SAE, D_IN)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(D_SAE), atol=1e-6)
    assert torch.allclose(dirs * sae.W_dec.norm(dim=1, keepdim=True), sae.W_dec, atol=1e-6)


def test_dtype_conversion_on_load(tmp_path: Path) -> None:
    sae = make_sae("topk")
    save_sae(sae, tmp_path / "s")
    half = load_sae(tmp_path / "s", dtype=torch.bfloat16)
    assert half.W_dec.dtype == torch.bfloat16 and half.cfg.dtype == "bfloat16"
    assert half.decoder_directions().dtype == torch.float32


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_fold_input_scale(arch: str) -> None:
    """An SAE trained on s*x, folded, gives on raw x the normalised model's output / s."""
    sae = make_sae(arch)
    s = 0.037
    folded = sae_from_tensors(sae.cfg, fold_input_scale(sae.state_tensors(), s))
    x = inputs() * 30
    assert torch.allclose(folded(x), sae(x * s) / s, rtol=1e-4, atol=1e-4)
    assert torch.allclose(folded.encode(x) * s, sae.encode(x * s), rtol=1e-4, atol=1e-5)
    assert torch.equal(folded.W_dec, sae.W_dec)


# -- other libraries' layouts ------------------------------------------------------------------
def write_saelens(path: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def test_load_saelens_v6_jumprelu(tmp_path: Path) -> None:
    t = random_tensors()
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post",
                        "sae_lens_version": "6.12.1"}}
    sae = load_sae(write_saelens(tmp_path / "j", cfg, t))
    assert sae.cfg.architecture == "jumprelu"
    assert sae.cfg.model_name == "gpt2" and sae.cfg.hook_name == "blocks.3.hook_resid_post"
    x = inputs()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    expect = torch.where(pre > t["threshold"], torch.relu(pre), torch.zeros(()))
    assert torch.allclose(sae.encode(x), expect)
    assert torch.allclose(sae(x), expect @ t["W_dec"] + t["b_dec"])


def test_load_saelens_standard_and_old_topk(tmp_path: Path) -> None:
    t = random_tensors(threshold=False)
    x = inputs()
    base = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "model_name": "m",
            "hook_name": "h", "normalize_activations": "none"}
    relu = load_sae(write_saelens(tmp_path / "std", {**base, "architecture": "standard",
                                                     "apply_b_dec_to_input": False}, t))
    assert relu.cfg.architecture == "relu" and not relu.cfg.apply_b_dec_to_input
    assert torch.allclose(relu.encode(x), torch.relu(x @ t["W_enc"] + t["b_enc"]))
    old_topk = load_sae(write_saelens(tmp_path / "tk", {
        **base, "architecture": "standard", "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 2}}, t))
    assert old_topk.cfg.architecture == "topk" and old_topk.cfg.k == 2
    f = old_topk.encode(x)
    assert ((f > 0).sum(1) <= 2).all()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    assert torch.allclose(f.max(1).values, torch.relu(pre.max(1).values))
    # a nested "architecture" inside a cfg object, SAELens batchtopk name
    t2 = random_tensors()
    nested = load_sae(write_saelens(tmp_path / "nested", {"cfg": {
        **base, "architecture": "matryoshka_batchtopk", "k": 3}}, t2))
    assert nested.cfg.architecture == "matryoshka" and nested.cfg.k == 3
    assert torch.equal(nested.threshold, t2["threshold"])


def test_load_sparsify_layout(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    m = 4 * D_IN
    enc_w = torch.randn(m, D_IN, generator=g)
    enc_b = torch.randn(m, generator=g) * 0.1
    w_dec = torch.randn(m, D_IN, generator=g)
    b_dec = torch.randn(D_IN, generator=g)
    d = tmp_path / "layers.3"
    d.mkdir()
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec},
              str(d / "sae.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"expansion_factor": 4, "normalize_decoder": True,
                                            "num_latents": 0, "k": 5, "d_in": D_IN}))
    sae = load_sae(d)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 5 and sae.cfg.d_sae == m
    x = inputs()
    pre = torch.relu((x - b_dec) @ enc_w.T + enc_b)
    vals, idx = pre.topk(5, dim=1)
    expect = torch.zeros(len(x), m).scatter(1, idx, vals)
    assert torch.allclose(sae.encode(x), expect, atol=1e-6)
    assert torch.allclose(sae(x), expect @ w_dec + b_dec, atol=1e-5)
    # pointing at the parent directory names the subdirectory to use
    with pytest.raises(io.InputError, match="layers.3"):
        load_sae(tmp_path)


def test_bad_inputs_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(io.InputError, match="does not exist"):
        load_sae(tmp_path / "missing")
    t = random_tensors(threshold=False)
    base = {"d_in": D_IN, "d_sae": D_SAE, "architecture": "standard"}
    # wrong shape
    bad = dict(t, W_enc=torch.zeros(D_IN, D_SAE + 1))
    with pytest.raises(io.InputError, match="W_enc"):
        load_sae(write_saelens(tmp_path / "shape", base, bad))
    # unknown architecture
    with pytest.raises(io.InputError, match="gated"):
        load_sae(write_saelens(tmp_path / "gated", {**base, "architecture": "gated"}, t))
    # missing tensor
    with pytest.raises(io.InputError, match="b_dec"):
        load_sae(write_saelens(tmp_path / "miss", base,
                               {k: v for k, v in t.items() if k != "b_dec"}))
    # missing cfg.json
    p = write_saelens(tmp_path / "nocfg", base, t)
    (p / "cfg.json").unlink()
    with pytest.raises(io.InputError, match="cfg.json"):
        load_sae(p)
    # corrupt weights
    p = write_saelens(tmp_path / "corrupt", base, t)
    (p / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(io.InputError, match="sae_weights.safetensors"):
        load_sae(p)
    # sparsify file without d_in
    q = tmp_path / "sp"
    q.mkdir()
    save_file({"encoder.weight": torch.zeros(4, 2)}, str(q / "sae.safetensors"))
    (q / "cfg.json").write_text(json.dumps({"k": 1, "num_latents": 4}))
    with pytest.raises(io.InputError, match="d_in"):
        load_sae(q)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SAEConfig(architecture="gated", d_in=4, d_sae=8)
    with pytest.raises(ValueError):
        SAEConfig(architecture="topk", d_in=4, d_sae=8)  # no k
    with pytest.raises(ValueError):
        SAEConfig(architecture="topk", d_in=4, d_sae=8, k=9)


def test_cfg_json_names_saelens_inference_architecture(tmp_path):
    """cfg.json's `architecture` is SAELens's name for the inference rule (so SAELens's loader
    reads our files; checked against SAELens itself by bench/saelens_compat.py), while the
    trained variant round-trips through `saestab_architecture`."""
    import json

    from saestab.sae import SAE, SAEConfig, load_sae, save_sae

    expected = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu",
                "jumprelu": "jumprelu", "matryoshka": "jumprelu"}
    for arch, saelens_name in expected.items():
        k = 4 if arch in ("topk", "batchtopk", "matryoshka") else None
        save_sae(SAE(SAEConfig(architecture=arch, d_in=8, d_sae=16, k=k)), tmp_path / arch)
        cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
        assert cfg["architecture"] == saelens_name
        assert cfg["saestab_architecture"] == arch
        assert load_sae(tmp_path / arch).cfg.architecture == arch
