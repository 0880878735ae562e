"""A base model and its compressed variant run the way a user runs them, side by side: file
bytes, memory after loading and after generating, prefill and decode speed.

Each model is measured in a fresh process (resident memory is per process), loaded with
`from_pretrained` and its default dtype (the saved one); the base is first saved as the 16-bit
checkpoint it is published as, so both sides are files a user would download. Every measure is
taken `--repeats` times, one process per repeat, alternating base and variant (so a machine that
slows down slows both), and reported as its median with the range of the repeats. Decode speed is
timed token by token inside one generation (from the first generated token to the last), never
as the difference of two runs. Memory is the process's resident memory on CPU; with `--device
cuda` (loaded with `device_map`, so compressed layers run the sparse-codes kernel) it is
`torch.cuda.memory_allocated` right after loading, before any warm-up, and the peak allocated
while generating.

    .venv/bin/python -m benchmarks.bench_runtime --base smollm2-135m --variant ./smollm2-135m-compot-dynamic-cr0.2
    .venv/bin/python -m benchmarks.bench_runtime --base whisper-tiny.en --variant ./whisper-tiny.en-compot-dynamic-cr0.2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [  # (key, label, unit, scale)
    ("file_bytes", "model.safetensors", "MB", 1e-6),
    ("memory_load", "memory after load, before warm-up", "MiB", 1 / 2**20),
    ("memory_generate", "memory after generating (CUDA: peak)", "MiB", 1 / 2**20),
    ("prefill", "prefill: a 512-token prompt, or Whisper's encoder on 30 s", "positions/s", 1),
    ("decode_1", "decode, batch 1", "tokens/s", 1),
    ("decode_8", "decode, batch 8", "tokens/s", 1),
]


def _memory(device: str, peak: bool = False) -> int:
    """Resident memory on CPU; on CUDA what is allocated now, or its peak."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
    import psutil

    return psutil.Process().memory_info().rss


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class TokenClock:
    """A generation streamer that notes when each step's tokens arrive (`put` gets them on the
    host, so on CUDA each time follows the step's kernels)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def rate(self, batch: int) -> float:
        """Tokens per second from the first generated token to the last: the decoding steps alone
        (the prompt's `put` and the prefill before the first token are left out)."""
        steps = self.times[1:]  # times[0]: the prompt itself
        return batch * (len(steps) - 1) / (steps[-1] - steps[0])


def _load(folder: Path, device: str):
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    speech = config.model_type == "whisper"
    auto = transformers.AutoModelForSpeechSeq2Seq if speech else transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder, device_map=None if device == "cpu" else device).eval(), config, speech


def _speech_inputs(model, folder: Path, device: str):
    """Whisper's features for 30 s of packaged speech, the encoder's prefill and a prompt per batch."""
    import transformers

    from zoo.calibration.speech import packaged_speech

    audio = packaged_speech(1)[0].audio
    processor = transformers.WhisperProcessor.from_pretrained(folder)
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features.to(device, model.dtype)
    model.generate(features, max_new_tokens=2)  # warm up
    prefill = features.shape[-1] // 2 / _timed(lambda: model.model.encoder(features), device)
    return prefill, lambda batch: {"input_features": features.expand(batch, -1, -1)}


def _text_inputs(model, vocab: int, device: str):
    """A 512-token prompt's prefill, and an 8-token random prompt per batch."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (1, 512), generator=generator).to(device)
    model(tokens[:, :8])  # warm up
    prefill = 512 / _timed(lambda: model(tokens), device)
    return prefill, lambda batch: {"input_ids": torch.randint(0, vocab, (batch, 8), generator=generator).to(device)}


def measure(folder: Path, new_tokens: int, threads: int, device: str = "cpu") -> dict:
    """In this process: load `folder` as a user would and run it once of each measure."""
    import torch

    import zoo  # noqa: F401  (registers the compressed layers with transformers)

    torch.set_num_threads(threads)
    with torch.inference_mode():
        model, config, speech = _load(folder, device)
        result = {"file_bytes": (folder / "model.safetensors").stat().st_size, "dtype": str(model.dtype)}
        result["memory_load"] = _memory(device)  # before any warm-up has allocated anything more
        prefill, prompt = (
            _speech_inputs(model, folder, device) if speech else _text_inputs(model, config.vocab_size, device)
        )
        result["prefill"] = prefill
        for batch in (1, 8):
            clock = TokenClock()
            model.generate(**prompt(batch), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           streamer=clock)  # fmt: skip
            result[f"decode_{batch}"] = clock.rate(batch)
        result["memory_generate"] = _memory(device, peak=True)
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


def alternate(measure_one, folders: dict[str, Path], repeats: int) -> dict[str, list[dict]]:
    """`repeats` measures of each folder, taken in turn (base, variant, base, variant, ...)."""
    runs: dict[str, list[dict]] = {name: [] for name in folders}
    for _ in range(repeats):
        for name, folder in folders.items():
            runs[name].append(measure_one(folder))
    return runs


def summary(runs: list[dict], key: str, scale: float) -> tuple[float, str]:
    """The median of a measure over the repeats, and the cell showing it with its range."""
    values = [run[key] * scale for run in runs]
    median = statistics.median(values)
    return median, f"{median:.1f} [{min(values):.1f}-{max(values):.1f}]"


def table(base: list[dict], variant: list[dict]) -> list[str]:
    """The markdown rows: per measure, each side's median [min-max] and the ratio of the medians."""
    lines = ["| measure | base, median [range] | compressed, median [range] | compressed / base |", "| --- " * 4 + "|"]
    for key, label, unit, scale in ROWS:
        (b, b_cell), (v, v_cell) = summary(base, key, scale), summary(variant, key, scale)
        lines.append(f"| {label} ({unit}) | {b_cell} | {v_cell} | {v / b:.3f} |")
    return lines


def _base_as_published(name: str, dtype: str, into: Path) -> Path:
    """The base saved as a 16-bit checkpoint, with what loads it (tokenizer or processor)."""
    import torch

    from zoo.modalities.base import get_adapter
    from zoo.sources.catalogue import resolve

    spec = resolve(name)
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(spec)
    loaded.model.to(getattr(torch, dtype)).save_pretrained(into)
    adapter.save_processor(loaded, into)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m", help="the base: an alias or a model folder")
    parser.add_argument("--variant", type=Path, required=True, help="a compressed checkpoint of it")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per decode run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="measures of each side, alternating")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    record = json.loads((args.variant / "compot_record.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = _base_as_published(args.base, record["config"]["dtype"], Path(tmp) / "base")
        runs = alternate(
            lambda folder: _in_child(folder, args.tokens, args.threads, args.device),
            {"base": base_dir, "variant": args.variant},
            args.repeats,
        )
    base, variant = runs["base"], runs["variant"]
    print(
        f"{args.base} ({base[0]['dtype']}) vs {args.variant.name} ({variant[0]['dtype']}) on {args.device}, "
        f"{args.threads} thread(s), {args.tokens} new tokens per decode run, {args.repeats} repeats each"
    )
    print("\n".join(table(base, variant)))


if __name__ == "__main__":
    main()
