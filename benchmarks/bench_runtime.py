"""A base model and its compressed variant run the way a user runs them, side by side: file
bytes, resident memory after loading and after generating, prefill and decode speed.

Each model is measured in a fresh process (resident memory is per process), loaded with
`from_pretrained` and its default dtype (the saved one); the base is first saved as the 16-bit
checkpoint it is published as, so both sides are files a user would download. Memory is the
process's resident memory on CPU, and `torch.cuda.max_memory_allocated` with `--device cuda`
(loaded with `device_map`, so compressed layers run the sparse-codes kernel).

    .venv/bin/python -m benchmarks.bench_runtime --base smollm2-135m --variant ./smollm2-135m-compot-dynamic-cr0.2
    .venv/bin/python -m benchmarks.bench_runtime --base whisper-tiny.en --variant ./whisper-tiny.en-compot-dynamic-cr0.2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [  # (key, label, unit, scale)
    ("file_bytes", "model.safetensors", "MB", 1e-6),
    ("memory_load", "memory after load", "MiB", 1 / 2**20),
    ("memory_generate", "memory after generating", "MiB", 1 / 2**20),
    ("prefill", "prefill: a 512-token prompt, or Whisper's encoder on 30 s", "positions/s", 1),
    ("decode_1", "decode, batch 1", "tokens/s", 1),
    ("decode_8", "decode, batch 8", "tokens/s", 1),
]


def _memory(device: str) -> int:
    """Resident memory on CPU; the peak of allocated memory on CUDA."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    import psutil

    return psutil.Process().memory_info().rss


def _timed(fn, device: str) -> float:
    import torch

    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(folder: Path, new_tokens: int, threads: int, device: str = "cpu") -> dict:
    """In this process: load `folder` as a user would and run it."""
    import torch
    import transformers

    import zoo  # noqa: F401  (registers the compressed layers with transformers)

    torch.set_num_threads(threads)
    config = transformers.AutoConfig.from_pretrained(folder)
    speech = config.model_type == "whisper"
    auto = transformers.AutoModelForSpeechSeq2Seq if speech else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(folder, device_map=None if device == "cpu" else device).eval()
    result = {"file_bytes": (folder / "model.safetensors").stat().st_size, "dtype": str(model.dtype)}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if speech:
            from zoo.calibration.speech import packaged_speech

            audio = packaged_speech(1)[0].audio
            processor = transformers.WhisperProcessor.from_pretrained(folder)
            features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
            features = features.to(device, model.dtype)
            model.generate(features, max_new_tokens=2)  # warm up
            result["memory_load"] = _memory(device)
            result["prefill"] = features.shape[-1] // 2 / _timed(lambda: model.model.encoder(features), device)

            def prompt(batch: int) -> dict:
                return {"input_features": features.expand(batch, -1, -1)}
        else:
            vocab = config.vocab_size
            tokens = torch.randint(0, vocab, (1, 512), generator=generator).to(device)
            model(tokens[:, :8])  # warm up
            result["memory_load"] = _memory(device)
            result["prefill"] = 512 / _timed(lambda: model(tokens), device)

            def prompt(batch: int) -> dict:
                return {"input_ids": torch.randint(0, vocab, (batch, 8), generator=generator).to(device)}

        def decode(batch: int) -> float:
            """Tokens per second of the decoding steps alone: a run of `new_tokens` less a run of one."""
            inputs = prompt(batch)

            def run(n: int) -> float:
                return _timed(
                    lambda: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False), device
                )

            return batch * (new_tokens - 1) / (run(new_tokens) - run(1))

        result["decode_1"] = decode(1)
        result["decode_8"] = decode(8)
        result["memory_generate"] = _memory(device)
    return result


def _in_child(folder: Path, new_tokens: int, threads: int, device: str) -> dict:
    code = (
        "import json, sys; from pathlib import Path; from benchmarks.bench_runtime import measure; "
        f"print(json.dumps(measure(Path({str(folder)!r}), {new_tokens}, {threads}, {device!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _base_as_published(name: str, dtype: str, into: Path) -> Path:
    """The base saved as a 16-bit checkpoint, with what loads it (tokenizer or processor)."""
    import torch

    from zoo.modalities.base import get_adapter
    from zoo.sources.catalogue import resolve

    spec = resolve(name)
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(spec, online=False)
    loaded.model.to(getattr(torch, dtype)).save_pretrained(into)
    adapter.save_processor(loaded, into)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m", help="the base: an alias or a model folder")
    parser.add_argument("--variant", type=Path, required=True, help="a compressed checkpoint of it")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per decode run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    record = json.loads((args.variant / "compot_record.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = _base_as_published(args.base, record["config"]["dtype"], Path(tmp) / "base")
        base = _in_child(base_dir, args.tokens, args.threads, args.device)
        variant = _in_child(args.variant, args.tokens, args.threads, args.device)
    print(
        f"{args.base} ({base['dtype']}) vs {args.variant.name} ({variant['dtype']}) on {args.device}, "
        f"{args.threads} thread(s), "
        f"{args.tokens} new tokens per decode run"
    )
    print("| measure | base | compressed | compressed / base |")
    print("| --- | --- | --- | --- |")
    for key, label, unit, scale in ROWS:
        print(
            f"| {label} ({unit}) | {base[key] * scale:.1f} | {variant[key] * scale:.1f} | "
            f"{variant[key] / base[key]:.3f} |"
        )


if __name__ == "__main__":
    main()
