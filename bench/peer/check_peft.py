#!/usr/bin/env python3
"""Check that an exported PEFT-layout LoRA adapter means what our tool says it means.

Loads the tiny HF base model (tests/fixtures/csm_tiny_hf) + the adapter with
peft's own PeftModel.from_pretrained, runs the forward on the
tests/fixtures/csm_tiny_ref.safetensors sequence, and compares with the
outputs OUR tool computed with the same adapter (the --expected file).

Subcommands
  check         --adapter DIR --expected FILE   the real check (exit 0 = PASS, 1 = FAIL)
  make-adapter  --out DIR                        a random adapter written by peft itself (save_pretrained),
                                                 non-zero A and B
  make-expected --adapter DIR --out FILE         expected outputs computed by peft (what our tool must write)
  selftest                                       make-adapter + make-expected + check must PASS,
                                                 and perturbed adapters must FAIL

Expected file (safetensors, float32, batch 1, S = 34 frames of csm_tiny_ref):
  backbone_hidden  [1, 34, 64]  backbone output after the final RMSNorm    (required)
  c0_logits        [1, 34, 67]  codebook0_head / lm_head of backbone_hidden (required)
  depth_logits_all [21, 7, 67]  depth-decoder logits for every frame in csm_tiny_ref
                                depth_frames_all, in that order (optional)
  loss_backbone, loss_depth, loss_total  [1]  with csm_tiny_ref `labels` (ratio 1.0), weights 1/1 (optional)
All computed with the adapter applied (W + (alpha/r) * B @ A, dropout off).
The input is csm_tiny_ref's `frames`/`frames_mask` (= its `inputs_embeds`).

A check FAILS if: adapter_config.json has a field we do not support; the set
of tensor names in adapter_model.safetensors differs from the set peft
expects for that config (peft itself ignores unknown names silently and only
warns about missing ones); a loaded tensor differs from the file; any output
differs by more than atol + rtol * max|expected|; or the adapter changes the
outputs by less than 10x that tolerance (the check would prove nothing).
"""

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
FX = REPO / "tests" / "fixtures"
DEFAULT_MODEL = FX / "csm_tiny_hf"
DEFAULT_REF = FX / "csm_tiny_ref.safetensors"

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJ_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
               "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

REQUIRED_KEYS = ["backbone_hidden", "c0_logits"]
OPTIONAL_KEYS = ["depth_logits_all", "loss_backbone", "loss_depth", "loss_total"]

# adapter_config.json values we support (anything else changes the maths)
MUST_BE = {
    "peft_type": "LORA",
    "use_rslora": False,   # True would make the scale alpha/sqrt(r)
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "layer_replication": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "trainable_token_indices": None,
    "target_parameters": None,
}


def target_names(stacks=("backbone", "decoder"), projs=ALL_PROJ, n_backbone=2, n_decoder=2):
    """Explicit full module names, e.g. 'backbone_model.layers.0.self_attn.q_proj'."""
    out = []
    if "backbone" in stacks:
        out += [f"backbone_model.layers.{i}.{PROJ_PARENT[p]}.{p}" for i in range(n_backbone) for p in projs]
    if "decoder" in stacks:
        out += [f"depth_decoder.model.layers.{i}.{PROJ_PARENT[p]}.{p}" for i in range(n_decoder) for p in projs]
    return out


def load_base(model_dir):
    from transformers import CsmForConditionalGeneration

    m = CsmForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager")
    m.eval()
    return m


@torch.no_grad()
def forward_outputs(model, ref):
    """The expected-file tensors for `model` (plain CSM or a PeftModel wrapping it)."""
    inner = model.base_model.model if hasattr(model, "peft_config") else model
    captured = {}

    def hook(_mod, _inp, out):
        captured["h"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    hdl = inner.backbone_model.register_forward_hook(hook)
    try:
        out = model(inputs_embeds=ref["inputs_embeds"], labels=ref["labels"].long())
    finally:
        hdl.remove()
    return {
        "backbone_hidden": captured["h"].float().contiguous(),
        "c0_logits": out.logits.float().contiguous(),
        "depth_logits_all": out.depth_decoder_logits.float().contiguous(),
        "loss_backbone": out.backbone_loss.float().reshape(1),
        "loss_depth": out.depth_decoder_loss.float().reshape(1),
        "loss_total": out.loss.float().reshape(1),
    }


def check_config(cfg):
    problems = []
    for k, v in MUST_BE.items():
        if k in cfg and cfg[k] != v and not (v == {} and cfg[k] is None):
            problems.append(f"adapter_config.json: {k} = {cfg[k]!r}, expected {v!r}")
    if cfg.get("peft_type") != "LORA":
        problems.append(f"adapter_config.json: peft_type must be \"LORA\" (got {cfg.get('peft_type')!r})")
    for k in ("r", "lora_alpha", "target_modules"):
        if k not in cfg:
            problems.append(f"adapter_config.json: missing {k}")
    if cfg.get("task_type") not in (None,):
        problems.append(f"adapter_config.json: task_type = {cfg.get('task_type')!r}; use null "
                        "(a task type makes peft wrap the model in a task class, e.g. PeftModelForCausalLM)")
    if cfg.get("lora_dropout", 0.0) != 0.0:
        print(f"  note: lora_dropout = {cfg['lora_dropout']} (inactive in eval, fine)")
    return problems


def compare(name, got, exp, atol, rtol):
    if tuple(got.shape) != tuple(exp.shape):
        return False, f"{name}: shape {tuple(exp.shape)} expected by the file, peft gives {tuple(got.shape)}"
    d = (got.double() - exp.double()).abs().max().item()
    scale = exp.double().abs().max().item()
    tol = atol + rtol * scale
    ok = d <= tol
    return ok, f"{name:<17} max|diff| {d:.3e}  tol {tol:.3e}  max|expected| {scale:.3e}  {'ok' if ok else 'MISMATCH'}"


def run_check(adapter_dir, expected_path, model_dir=DEFAULT_MODEL, ref_path=DEFAULT_REF, atol=1e-4, rtol=1e-4,
              min_effect_factor=10.0, verbose=True):
    """Returns (passed: bool, report: dict)."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    adapter_dir, expected_path = Path(adapter_dir), Path(expected_path)
    lines, ok = [], True

    def say(s):
        lines.append(s)
        if verbose:
            print("  " + s)

    # --- config
    cfg_path = adapter_dir / "adapter_config.json"
    st_path = adapter_dir / "adapter_model.safetensors"
    for p in (cfg_path, st_path, expected_path):
        if not p.exists():
            say(f"FAIL: {p} does not exist")
            return False, {"lines": lines}
    cfg = json.loads(cfg_path.read_text())
    probs = check_config(cfg)
    for p in probs:
        say("FAIL: " + p)
    ok &= not probs

    ref = load_file(str(ref_path))
    expected = load_file(str(expected_path))
    missing_req = [k for k in REQUIRED_KEYS if k not in expected]
    if missing_req:
        say(f"FAIL: expected file lacks {missing_req}")
        ok = False
    extra = sorted(set(expected) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if extra:
        say(f"note: expected file has keys this check ignores: {extra}")

    # --- load base + adapter with peft itself
    base = load_base(model_dir)
    base_out = forward_outputs(base, ref)
    file_sd = load_file(str(st_path))
    try:
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            pm = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
        for w in wlist:
            if "adapter" in str(w.message).lower():
                say(f"peft warning: {str(w.message)[:300]}")
    except Exception as e:  # noqa: BLE001  (any load error is a FAIL with its message)
        say(f"FAIL: PeftModel.from_pretrained raised {type(e).__name__}: {str(e)[:500]}")
        return False, {"lines": lines}
    pm.eval()

    peft_sd = get_peft_model_state_dict(pm)
    want, have = set(peft_sd), set(file_sd)
    if want != have:
        ok = False
        miss, unexp = sorted(want - have), sorted(have - want)
        say(f"FAIL: tensor names differ from what peft expects for this config: "
            f"{len(miss)} missing (left at init = no effect), {len(unexp)} unexpected (silently ignored by peft)")
        for k in miss[:5]:
            say(f"  missing:    {k}")
        for k in unexp[:5]:
            say(f"  unexpected: {k}")
        if any(not k.startswith("base_model.model.") for k in unexp):
            say("  hint: every key starts with 'base_model.model.' followed by the transformers module path")
        if any(".default." in k for k in unexp):
            say("  hint: no adapter name in the key ('...lora_A.weight', not '...lora_A.default.weight'); "
                "peft 0.21.2 happens to load that form too, but save_pretrained never writes it")
        if any(k.startswith("base_model.model.codec_model.") for k in miss):
            say("  hint: target_modules also matches the Mimi codec's attention (codec_model.*); "
                "use full module names or a regex limited to backbone_model / depth_decoder.model")
    else:
        say(f"tensor names: all {len(want)} match (e.g. {sorted(want)[0]})")
    bad_vals = [k for k in want & have if not torch.equal(peft_sd[k].float().cpu(), file_sd[k].float())]
    if bad_vals:
        ok = False
        say(f"FAIL: {len(bad_vals)} tensors differ after loading, e.g. {bad_vals[0]}")
    n_mod = sum(1 for n, m in pm.base_model.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    say(f"LoRA modules injected by peft: {n_mod}; r={cfg.get('r')} lora_alpha={cfg.get('lora_alpha')} "
        f"scale={cfg.get('lora_alpha', 0) / max(1, cfg.get('r', 1)):g}")

    # --- forward and compare
    got = forward_outputs(pm, ref)
    results = {}
    min_effect = None
    for k in REQUIRED_KEYS + OPTIONAL_KEYS:
        if k not in expected:
            continue
        good, msg = compare(k, got[k], expected[k].float(), atol, rtol)
        say(msg)
        ok &= good
        if tuple(got[k].shape) == tuple(expected[k].shape) and k in REQUIRED_KEYS:
            eff = (got[k].double() - base_out[k].double()).abs().max().item()
            tol = atol + rtol * expected[k].double().abs().max().item()
            results[k] = {"adapter_effect": eff, "tol": tol}
            say(f"{'':<17} adapter effect on {k} (peft vs base): {eff:.3e}")
            min_effect = eff / tol if min_effect is None else min(min_effect, eff / tol)
    if min_effect is not None and min_effect < min_effect_factor:
        ok = False
        say(f"FAIL: the adapter changes the outputs by only {min_effect:.1f}x the tolerance (< {min_effect_factor:g}x); "
            "use a larger random B so the comparison means something")
    say("PASS" if ok else "FAIL")
    return ok, {"lines": lines, "passed": ok, "results": results}


def make_adapter(out_dir, model_dir=DEFAULT_MODEL, r=4, alpha=8, projs=ALL_PROJ, stacks=("backbone", "decoder"),
                 seed=0, b_std=0.1):
    """A peft-written adapter (save_pretrained) with random non-zero lora_A and lora_B."""
    from peft import LoraConfig, get_peft_model

    base = load_base(model_dir)
    c = base.config
    targets = target_names(stacks, projs, c.num_hidden_layers, c.depth_decoder_config.num_hidden_layers)
    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets)
    pm = get_peft_model(base, lcfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _n, m in pm.base_model.model.named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                A, B = m.lora_A["default"].weight, m.lora_B["default"].weight
                A.copy_(torch.randn(A.shape, generator=g) / A.shape[1] ** 0.5)
                B.copy_(torch.randn(B.shape, generator=g) * b_std)
    pm.save_pretrained(str(out_dir))
    return pm


def make_expected(adapter_dir, out_path, model_dir=DEFAULT_MODEL, ref_path=DEFAULT_REF):
    from peft import PeftModel

    ref = load_file(str(ref_path))
    pm = PeftModel.from_pretrained(load_base(model_dir), str(adapter_dir))
    pm.eval()
    outs = forward_outputs(pm, ref)
    save_file(dict(sorted(outs.items())), str(out_path))
    return outs


def _rewrite(src, dst, fn_sd=None, fn_cfg=None):
    shutil.copytree(src, dst)
    if fn_sd:
        sd = load_file(str(Path(src) / "adapter_model.safetensors"))
        save_file(fn_sd(sd), str(Path(dst) / "adapter_model.safetensors"))
    if fn_cfg:
        cfg = json.loads((Path(src) / "adapter_config.json").read_text())
        (Path(dst) / "adapter_config.json").write_text(json.dumps(fn_cfg(cfg), indent=2))


def selftest(workdir=None, keep=False):
    from transformers import CsmConfig

    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="check_peft_"))
    tmp.mkdir(parents=True, exist_ok=True)
    cfgm = CsmConfig.from_pretrained(DEFAULT_MODEL)
    heads_q = cfgm.num_attention_heads
    good = tmp / "good"
    if good.exists():
        shutil.rmtree(good)
    make_adapter(good)
    make_expected(good, tmp / "expected.safetensors")
    exp = tmp / "expected.safetensors"

    def to_interleaved(w, n_heads):  # the mistake an exporter from original-layout q/k would make
        out_dim, r = w.shape
        hd = out_dim // n_heads
        return w.view(n_heads, 2, hd // 2, r).transpose(1, 2).reshape(out_dim, r).contiguous()

    qB = "base_model.model.backbone_model.layers.0.self_attn.q_proj.lora_B.weight"
    cases = [
        ("peft's own adapter", None, None, True),
        ("minimal adapter_config.json + no safetensors metadata",
         lambda sd: dict(sd),  # save_file without metadata
         lambda c: {"peft_type": "LORA", "r": c["r"], "lora_alpha": c["lora_alpha"],
                    "target_modules": c["target_modules"]}, True),
        ("target_modules as a regex string",
         None, lambda c: {**c, "target_modules":
                          r"^(backbone_model|depth_decoder\.model)\.layers\.\d+\.(self_attn|mlp)\."
                          r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"}, True),
        ("one lora_B perturbed by 1e-3 * N(0,1)",
         lambda sd: {**sd, qB: sd[qB] + 1e-3 * torch.randn(sd[qB].shape, generator=torch.Generator().manual_seed(5))},
         None, False),
        ("backbone q_proj lora_B rows in interleaved (original) RoPE order",
         lambda sd: {k: (to_interleaved(v, heads_q) if k.endswith("self_attn.q_proj.lora_B.weight")
                         and "backbone_model" in k else v) for k, v in sd.items()}, None, False),
        ("keys without the base_model.model. prefix",
         lambda sd: {k[len("base_model.model."):]: v for k, v in sd.items()}, None, False),
        ("keys with the adapter name (...lora_A.default.weight; peft loads it, save_pretrained never writes it)",
         lambda sd: {k.replace(".lora_A.weight", ".lora_A.default.weight")
                      .replace(".lora_B.weight", ".lora_B.default.weight"): v for k, v in sd.items()}, None, False),
        ("lora_alpha doubled in adapter_config.json", None, lambda c: {**c, "lora_alpha": c["lora_alpha"] * 2}, False),
        ("use_rslora true", None, lambda c: {**c, "use_rslora": True}, False),
        ("A and B swapped in name (lora_A <-> lora_B)",
         lambda sd: {k.replace("lora_A", "TMP").replace("lora_B", "lora_A").replace("TMP", "lora_B"): v
                     for k, v in sd.items()}, None, False),
        ("target_modules ['q_proj', ...] (also hits the codec's Mimi attention)",
         None, lambda c: {**c, "target_modules": ALL_PROJ}, False),
    ]
    results = []
    for i, (name, fsd, fcfg, want_pass) in enumerate(cases):
        print(f"== selftest {i}: {name} (must {'PASS' if want_pass else 'FAIL'})")
        d = good
        if fsd or fcfg:
            d = tmp / f"case{i}"
            if d.exists():
                shutil.rmtree(d)
            _rewrite(good, d, fsd, fcfg)
        passed, _ = run_check(d, exp)
        right = passed == want_pass
        results.append((name, want_pass, passed, right))
    print("== selftest summary")
    for name, want, got, right in results:
        print(f"  {'ok ' if right else 'BAD'}  must {'PASS' if want else 'FAIL'}, did {'PASS' if got else 'FAIL'}: {name}")
    all_right = all(r[3] for r in results)
    if not keep and not workdir:
        shutil.rmtree(tmp)
        where = "temporary files removed; --workdir DIR keeps them"
    else:
        where = f"files in {tmp}"
    print("SELFTEST " + ("OK" if all_right else "FAILED") + f" ({where})")
    return all_right


def main():
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="compare our adapter + outputs against peft")
    c.add_argument("--adapter", required=True, help="dir with adapter_model.safetensors + adapter_config.json")
    c.add_argument("--expected", required=True, help="safetensors with backbone_hidden, c0_logits (see --help)")
    c.add_argument("--model", default=str(DEFAULT_MODEL))
    c.add_argument("--ref", default=str(DEFAULT_REF))
    c.add_argument("--atol", type=float, default=1e-4)
    c.add_argument("--rtol", type=float, default=1e-4)
    c.add_argument("--min-effect", type=float, default=10.0,
                   help="fail unless the adapter moves the outputs by this many tolerances (default 10; 0 = off)")
    c.add_argument("--json", default=None)
    m = sub.add_parser("make-adapter", help="write a random non-zero adapter with peft's save_pretrained")
    m.add_argument("--out", required=True)
    m.add_argument("--model", default=str(DEFAULT_MODEL))
    m.add_argument("--r", type=int, default=4)
    m.add_argument("--alpha", type=float, default=8)
    m.add_argument("--targets", default=",".join(ALL_PROJ))
    m.add_argument("--stacks", default="backbone,decoder")
    m.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("make-expected", help="write the expected-outputs file computed by peft")
    e.add_argument("--adapter", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--model", default=str(DEFAULT_MODEL))
    e.add_argument("--ref", default=str(DEFAULT_REF))
    s = sub.add_parser("selftest", help="check passes on peft's own adapter and fails on perturbed ones")
    s.add_argument("--workdir", default=None, help="keep the generated adapters here")
    s.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    if a.cmd == "check":
        ok, rep = run_check(a.adapter, a.expected, a.model, a.ref, a.atol, a.rtol, a.min_effect)
        if a.json:
            Path(a.json).write_text(json.dumps({"adapter": a.adapter, "expected": a.expected, **rep}, indent=2) + "\n")
        sys.exit(0 if ok else 1)
    elif a.cmd == "make-adapter":
        make_adapter(a.out, a.model, a.r, a.alpha, [t for t in a.targets.split(",") if t],
                     tuple(t for t in a.stacks.split(",") if t), a.seed)
        print(f"wrote {a.out}/adapter_model.safetensors and adapter_config.json")
    elif a.cmd == "make-expected":
        outs = make_expected(a.adapter, a.out, a.model, a.ref)
        print(f"wrote {a.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in outs.items()))
    elif a.cmd == "selftest":
        sys.exit(0 if selftest(a.workdir, a.keep) else 1)


if __name__ == "__main__":
    main()
