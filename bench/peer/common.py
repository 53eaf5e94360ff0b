"""Shared helpers for the peer (PyTorch / transformers / peft) benchmarks.

Nothing here downloads anything: every model is built from a config with
random weights. See README.md in this folder.
"""

import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_HF_DIR = REPO / "tests" / "fixtures" / "csm_tiny_hf"

# RoPE scaling exactly as the released sesame/csm-1b HF config stores it
# (equivalent to the original {factor 32, low 1, high 4, original 8192}; see
# shared docs csm-architecture.md 1.2). It does not change the cost.
BACKBONE_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 0.125,
    "high_freq_factor": 0.5,
    "original_max_position_embeddings": 1024,
}
DEPTH_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 0.001953125,
    "high_freq_factor": 0.0078125,
    "original_max_position_embeddings": 16,
}

# target regex: q_proj/v_proj of the backbone and depth-decoder layers only.
# A plain list ["q_proj", "v_proj"] would ALSO hit the Mimi codec's
# encoder/decoder transformers (codec_model.*.self_attn.q_proj), see README.
def lora_target_regex(projs):
    alt = "|".join(projs)
    return rf"^(backbone_model|depth_decoder\.model)\.layers\.\d+\.self_attn\.({alt})$"


def setup_threads(n):
    """Set torch intra-op (and inter-op) threads before any parallel work."""
    import torch

    if n is None or n <= 0:
        n = os.cpu_count() or 1
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(max(1, min(n, 2)))
    except RuntimeError:
        pass  # already started; harmless
    return n


def env_info(device):
    """Library versions, thread settings and the BLAS line of torch's build config."""
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    cfg = torch.__config__.show()
    blas = [l.strip() for l in cfg.splitlines() if "Math Kernel" in l or "BLAS_INFO" in l or "OpenBLAS" in l]
    # the Build settings line is long; keep only its BLAS/LAPACK entries
    short = []
    for l in blas:
        if l.startswith("- Build settings"):
            short.append(", ".join(p.strip() for p in l.split(",") if "BLAS" in p or "LAPACK" in p or "MKL" in p))
        else:
            short.append(l)
    info["blas_config"] = short
    info["cpu_capability"] = [l.strip() for l in cfg.splitlines() if "CPU capability" in l]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    if device == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def print_env(info):
    print("== environment")
    for k, v in info.items():
        if isinstance(v, list) and v and isinstance(v[0], str):
            for i, x in enumerate(v):
                print(f"  {k if i == 0 else '':<26} {x}")
        else:
            print(f"  {k:<26} {v}")
    sys.stdout.flush()


def parse_dtype(name):
    import torch

    return {"float32": torch.float32, "f32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "f16": torch.float16}[name]



def _config_without_tied_flag(path):
    """The fixture config with every `tie_word_embeddings` key removed."""
    with open(path) as f:
        d = json.load(f)

    def strip(x):
        if isinstance(x, dict):
            x.pop("tie_word_embeddings", None)
            for v in x.values():
                strip(v)

    strip(d)
    return d

def csm_config(size, codec="tiny", num_codebooks=None):
    """CsmConfig for `size` in {"1b", "tiny"}; `codec` in {"tiny", "real"}.

    "1b": the released CSM-1B dimensions (they are CsmConfig's defaults in
    transformers 5.24: backbone 16 x 2048/8192, 32/8 heads, head_dim 64;
    depth decoder 4 x 1024/8192, 8/2 heads, head_dim 128; 32 codebooks,
    audio vocab 2051, text vocab 128256), set explicitly here.
    "tiny": tests/fixtures/csm_tiny_hf/config.json (8 codebooks).

    codec "real": MimiConfig() defaults = the released kyutai/mimi sizes
    (SEANet 64 filters, ratios [8,6,5,4], 512-d 8-layer transformers,
    2048-entry codebooks of dim 256, 12.5 Hz), with num_quantizers =
    num_codebooks. codec "tiny": the fixture's tiny Mimi (hop 16 samples).
    """
    from transformers import CsmConfig, MimiConfig

    # Older transformers (5.17) refuse the tie_word_embeddings flag that
    # newer ones write into the fixture config; CSM never ties them.
    tiny = CsmConfig.from_dict(_config_without_tied_flag(os.path.join(TINY_HF_DIR, "config.json")))
    if size == "tiny":
        cfg = tiny
        nq = cfg.num_codebooks
    elif size == "1b":
        nq = 32 if num_codebooks is None else num_codebooks
        depth = dict(
            num_codebooks=nq,
            backbone_hidden_size=2048,
            vocab_size=2051,
            hidden_size=1024,
            intermediate_size=8192,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=128,
            max_position_embeddings=33,
            rms_norm_eps=1e-5,
            rope_parameters=dict(DEPTH_ROPE),
            hidden_act="silu",
        )
        cfg = CsmConfig(
            num_codebooks=nq,
            vocab_size=2051,
            text_vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            rope_parameters=dict(BACKBONE_ROPE),
            hidden_act="silu",
            pad_token_id=128002,
            bos_token_id=128000,
            eos_token_id=None,
            codebook_pad_token_id=2050,
            codebook_eos_token_id=0,
            audio_token_id=128002,
            audio_eos_token_id=128003,
            tie_codebooks_embeddings=True,
            depth_decoder_config=depth,
            codec_config=tiny.codec_config.to_dict(),
        )
    else:
        raise ValueError(size)

    if codec == "real":
        mimi = MimiConfig(num_quantizers=nq)
    elif codec == "tiny":
        d = tiny.codec_config.to_dict()
        d["num_quantizers"] = nq
        mimi = MimiConfig.from_dict(d)
    else:
        raise ValueError(codec)
    cfg.codec_config = mimi
    return cfg


def build_model(cfg, device, dtype, attn="sdpa", seed=0):
    """Random-weight CsmForConditionalGeneration built directly on `device` in `dtype`.

    Weights come from transformers' own _init_weights (normal, std 0.02; norms 1).
    """
    import torch
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(seed)
    cfg._attn_implementation = attn
    if hasattr(cfg, "codec_config"):
        cfg.codec_config._attn_implementation = attn
        cfg.depth_decoder_config._attn_implementation = attn
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CsmForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(old)
    model.to(device=device, dtype=dtype)
    return model


def codec_hop(model):
    """Waveform samples per CSM frame for the model's codec (1920 for the real Mimi, 16 tiny)."""
    import torch

    c = model.codec_model
    sr = c.config.sampling_rate
    fr = c.config.frame_rate
    hop = int(round(sr / fr))
    for k in (1, 3, 130):
        dev = next(c.parameters()).device
        got = int(c.get_encoded_length(torch.tensor([k * hop], device=dev)).item())
        assert got == k, (hop, k, got)
    return hop


class RssSampler:
    """Samples this process's RSS (psutil) every `interval` s in a thread; keeps the peak."""

    def __init__(self, interval=0.01):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = None

    def _run(self):
        while not self._stop.is_set():
            try:
                r = self.proc.memory_info().rss
            except Exception:
                r = 0
            if r > self.peak:
                self.peak = r
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        r = self.proc.memory_info().rss
        self.peak = max(self.peak, r)


def rss_mb():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def maxrss_mb():
    # Linux: ru_maxrss is in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def stats(xs):
    import statistics

    xs = list(xs)
    return {
        "median": statistics.median(xs),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def print_table(rows, title=None):
    """rows: list of (name, value) pairs."""
    if title:
        print(f"== {title}")
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.4g}" if abs(v) < 1e5 else f"{v:.1f}"
        print(f"  {k:<{w}}  {v}")
    sys.stdout.flush()


def write_json(path, obj):
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


def now_utc():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
