"""Speech for calibrating and scoring Whisper: LibriSpeech through `datasets`, local folders
(LibriSpeech's layout or name.wav + name.txt), the real read speech that pocketsphinx's sdist
ships ("librivox-offline"), and speech synthesised with flite or espeak-ng.

Every source gives the same thing: mono float32 audio at 16 kHz, what Whisper's feature
extractor expects, so a model never sees a sample rate it was not trained on. WAV is read with
the stdlib; FLAC and other formats need `soundfile`; other sample rates are resampled with
scipy's polyphase filter rather than refused.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.calibration.subsets import seeded_pick
from zoo.digest import digest
from zoo.errors import ZooError

SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")
HUB_ID = "openslr/librispeech_asr"
HUB_SPLITS = ("validation", "test")
HUB_CONFIGS = ("clean", "other")
# name -> "<split>.<config>"; the bare names are the calibration splits (the paper: validation.clean)
HUB_SETS = {
    "librispeech": "validation.clean",
    "librispeech-other": "validation.other",
    **{f"librispeech-{p}-{c}": f"{p}.{c}" for p in HUB_SPLITS for c in HUB_CONFIGS},
}
OFFLINE = "librivox-offline"
SYNTHESIZERS = {"flite": "slt", "espeak-ng": "en-us"}  # program -> its default voice
# name -> split of the shipped Wikipedia articles whose sentences flite reads (offline Whisper sets)
SYNTHESIZED_SETS = {"tts-wiki-train": "train", "tts-wiki-test": "test"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPEAKABLE = re.compile(r"[A-Z][A-Za-z']*(?:,? [A-Za-z']+|-[A-Za-z']+)*[.!?]")


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class Utterance:
    """One utterance: mono float32 audio at 16 kHz and its reference transcript."""

    id: str
    audio: np.ndarray
    text: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


# --- decoding ---------------------------------------------------------------------------------


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the rate of integer PCM WAV, via the stdlib only."""
    with wave.open(io.BytesIO(data)) as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        frames = w.readframes(w.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128) / 128
    else:  # 16/24/32-bit little-endian: place each sample in the high bytes of an int32
        raw = np.frombuffer(frames, np.uint8).reshape(-1, width)
        padded = np.zeros((len(raw), 4), np.uint8)
        padded[:, 4 - width :] = raw
        samples = padded.view("<i4").ravel().astype(np.float32) / 2**31
    return samples.reshape(-1, channels), rate


def _read_soundfile(data: bytes, name: str, why: str) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the rate of anything libsndfile reads (FLAC, OGG, MP3, float WAV)."""
    try:
        import soundfile
    except ImportError as exc:
        raise ZooError(
            f"cannot decode audio {name}: {why}, and reading it needs the soundfile package "
            "(pip install soundfile); only integer PCM WAV is read without it"
        ) from exc
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate


def _read(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """The stdlib for integer PCM WAV, libsndfile for the rest (float WAV included)."""
    if not name.lower().endswith(".wav"):
        return _read_soundfile(data, name, "it is not WAV")
    try:
        return _read_wav(data)
    except wave.Error as exc:
        return _read_soundfile(data, name, f"it is not integer PCM WAV ({exc})")


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """`audio` at `rate` Hz resampled to `target` Hz with an anti-aliasing polyphase filter."""
    if rate == target:
        return audio.astype(np.float32, copy=False)
    try:
        from scipy.signal import resample_poly
    except ImportError as exc:
        raise ZooError(f"resampling {rate} Hz audio to {target} Hz needs scipy (pip install scipy)") from exc
    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def decode_audio(data: bytes, name: str) -> np.ndarray:
    """Mono float32 at 16 kHz from the bytes of an audio file; `name` (a path) picks the reader
    by its suffix and is named in every error."""
    try:
        samples, rate = _read(data, name)
    except ZooError:  # a ValueError too: keep its message as it is
        raise
    except (EOFError, ValueError, RuntimeError, OSError) as exc:  # soundfile's errors are RuntimeErrors
        raise ZooError(f"cannot decode audio {name}: {exc}") from exc
    if samples.size == 0:
        raise ZooError(f"audio {name} is empty (no samples)")
    if not rate > 0:
        raise ZooError(f"audio {name} declares a sample rate of {rate} Hz")
    return resample(samples.mean(axis=1), rate)


# --- subsets and fingerprints -----------------------------------------------------------------


def speech_fingerprint(utterances: list[Utterance]) -> str:
    """A digest of the ids, transcripts and exact samples, so a checkpoint records what it was calibrated on."""
    return digest(
        part
        for u in utterances
        for part in (
            u.id.encode() + b"\0" + u.text.encode() + b"\0",
            np.ascontiguousarray(u.audio, dtype="<f4").tobytes(),
        )
    )


# --- local folders ----------------------------------------------------------------------------


def _audio_files(root: Path) -> dict[str, Path]:
    """Utterance id (the file's stem) -> audio file, anywhere below `root`."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        if path.stem in found:
            raise ZooError(f"two audio files share the utterance id {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def _librispeech_transcripts(root: Path) -> dict[str, str]:
    """Id -> text from LibriSpeech's `*.trans.txt` files (lines `<utterance-id> <TRANSCRIPT>`)."""
    texts: dict[str, str] = {}
    for path in sorted(root.rglob("*.trans.txt")):
        for line in _utf8(path).splitlines():
            if line.strip():
                uid, _, text = line.strip().partition(" ")
                texts[uid] = text.strip()
    return texts


def _transcript(uid: str, audio: Path, listed: dict[str, str]) -> str:
    """The utterance's line in a `*.trans.txt`, else the text of `name.txt` beside `name.wav`."""
    if uid in listed:
        return listed[uid]
    beside = audio.with_suffix(".txt")
    if not beside.is_file():
        raise ZooError(
            f"no transcript for utterance {uid!r} ({audio}): expected {beside.name} beside it "
            "or a line in a *.trans.txt file"
        )
    return " ".join(_utf8(beside).split())


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ZooError(f"transcript {path} is not UTF-8 text: {exc}") from exc


def local_folder(path: str | Path, n: int | None = None, seed: int = 0, at_most: bool = False) -> list[Utterance]:
    """Utterances of a folder in LibriSpeech's layout or as name.wav + name.txt pairs.

    Every transcript is checked before any audio is decoded, so a folder's errors do not depend
    on the seed; only the picked utterances are decoded.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ZooError(f"speech folder {root} does not exist or is not a folder")
    audio = _audio_files(root)
    if not audio:
        raise ZooError(f"speech folder {root} holds no utterances (no {', '.join(AUDIO_SUFFIXES)} files)")
    listed = _librispeech_transcripts(root)
    texts = {uid: _transcript(uid, file, listed) for uid, file in audio.items()}
    return [
        Utterance(uid, decode_audio(audio[uid].read_bytes(), str(audio[uid])), texts[uid])
        for uid in seeded_pick(audio, n, seed, str(root), at_most, "utterances")
    ]


def packaged_speech(n: int | None = None, seed: int = 0, at_most: bool = False) -> list[Utterance]:
    """Five real LibriVox read-speech utterances (about 24 s) from pocketsphinx's sdist: the
    offline stand-in for LibriSpeech, too few to hold a test set apart from calibration."""
    from zoo.sources.assets import fetch_asset

    return local_folder(fetch_asset("librivox-speech"), n, seed, at_most)


# --- the Hub ----------------------------------------------------------------------------------


def _hub_split(split: str) -> tuple[str, str]:
    """ "validation.clean" -> ("validation", "clean"): the Hub set's split and config."""
    part, _, config = split.partition(".")
    if part not in HUB_SPLITS or config not in HUB_CONFIGS:
        known = ", ".join(f"{p}.{c}" for c in HUB_CONFIGS for p in HUB_SPLITS)
        raise ZooError(f"unknown LibriSpeech split {split!r}; known: {known}")
    return part, config


def librispeech(
    split: str = "validation.clean", n: int | None = None, seed: int = 0, at_most: bool = False, online: bool = True
) -> list[Utterance]:
    """LibriSpeech from the Hub (the paper calibrates on 1024 utterances of validation.clean).

    Audio is read undecoded and decoded here, so this needs soundfile (FLAC), not the
    torchcodec that `datasets` would otherwise decode with.
    """
    part, config = _hub_split(split)
    if not online:
        raise ZooError(
            f"LibriSpeech ({HUB_ID}) needs the Hugging Face Hub, which is unreachable from here "
            f"(HF_HUB_OFFLINE or no network); pass a local folder of LibriSpeech audio "
            f"(e.g. an extracted dev-clean) or {OFFLINE!r}"
        )
    import datasets

    try:
        ds = datasets.load_dataset(HUB_ID, config, split=part)
    except OSError as exc:  # connection, missing file, dataset not found
        raise ZooError(
            f"cannot load LibriSpeech {split} ({HUB_ID}) from the Hub: {exc}; "
            "pass a local folder of LibriSpeech audio instead"
        ) from exc
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    row_of = {uid: i for i, uid in enumerate(ds["id"])}
    rows = ds.select(
        [row_of[uid] for uid in seeded_pick(row_of, n, seed, f"LibriSpeech {split}", at_most, "utterances")]
    )
    return [Utterance(row["id"], _hub_audio(row["audio"], row["id"]), row["text"]) for row in rows]


def _hub_audio(audio: dict, uid: str) -> np.ndarray:
    """An undecoded `datasets` Audio value: the file's bytes, or a path to it in the local cache."""
    name = audio.get("path") or uid
    data = audio.get("bytes") or Path(audio["path"]).read_bytes()
    return decode_audio(data, name)


# --- synthesis --------------------------------------------------------------------------------


def _synthesis_command(program: str, voice: str, text_file: Path, wav: Path) -> list[str]:
    if program == "flite":
        return [program, "-voice", voice, "-f", str(text_file), "-o", str(wav)]
    return [program, "-v", voice, "-f", str(text_file), "-w", str(wav)]


def _check_voice(program: str, voice: str) -> None:
    """flite falls back to its 8 kHz "kal" voice on an unknown name without a word: refuse it."""
    if program != "flite" or Path(voice).is_file():
        return
    listed = subprocess.run([program, "-lv"], capture_output=True, text=True).stdout
    voices = listed.partition(":")[2].split()
    if voice not in voices:
        raise ZooError(f"flite has no voice {voice!r}; it has {', '.join(voices)}")


def synthesized_speech(texts: list[str], voice: str | None = None, program: str = "flite") -> list[Utterance]:
    """Speech synthesised from `texts` (e.g. held-out Wikipedia sentences) with a Debian program.

    flite's "slt" voice is the default: Whisper tiny.en transcribes it at about 6% WER,
    espeak-ng's default English at about 23%.
    """
    if program not in SYNTHESIZERS:
        raise ZooError(f"unknown speech synthesizer {program!r}; known: {', '.join(SYNTHESIZERS)}")
    if shutil.which(program) is None:
        raise ZooError(
            f"speech synthesis needs {program}, which is not installed (Debian/Ubuntu: apt-get install {program})"
        )
    blank = [i for i, text in enumerate(texts) if not text.strip()]
    if blank:
        raise ZooError(f"cannot synthesise blank texts (indices {blank[:10]})")
    voice = voice or SYNTHESIZERS[program]
    _check_voice(program, voice)
    utterances = []
    with tempfile.TemporaryDirectory(prefix="zoo-tts-") as tmp:
        for i, text in enumerate(texts):
            uid, text_file, wav = f"synth-{i:04d}", Path(tmp) / "text.txt", Path(tmp) / f"{i}.wav"
            text_file.write_text(text, encoding="utf-8")
            done = subprocess.run(_synthesis_command(program, voice, text_file, wav), capture_output=True, text=True)
            if done.returncode != 0 or not wav.is_file():
                raise ZooError(
                    f"{program} failed on utterance {uid} ({text[:60]!r}): "
                    f"{(done.stderr or done.stdout).strip()[-500:]}"
                )
            utterances.append(Utterance(uid, decode_audio(wav.read_bytes(), f"{program}-{uid}.wav"), text))
    return utterances


# --- by name ----------------------------------------------------------------------------------


def speakable_sentences(split: str) -> list[str]:
    """Sentences of the shipped Wikipedia articles (`wiki-offline`, train or test split) that a
    synthesiser reads as written: letters and light punctuation only, 6 to 30 words. Digits and
    abbreviations are left out, as flite and Whisper's normaliser would spell them differently.
    Articles quote each other, so train sentences that also occur in the test split are dropped."""
    from zoo.calibration.text import load_texts

    held_out = set(speakable_sentences("test")) if split == "train" else set()
    sentences = []
    for article in load_texts("wiki-offline", split):
        for line in article.splitlines():
            for sentence in _SENTENCE_END.split(line.strip()):
                if _SPEAKABLE.fullmatch(sentence) and 6 <= len(sentence.split()) <= 30 and sentence not in held_out:
                    sentences.append(sentence)
    return list(dict.fromkeys(sentences))


def synthesized_wiki(split: str, n: int | None = None, seed: int = 0, at_most: bool = False) -> list[Utterance]:
    """flite reading held-out sentences: the train split calibrates, the test split scores."""
    sentences = {f"wiki-{split}-{i:05d}": text for i, text in enumerate(speakable_sentences(split))}
    picked = seeded_pick(sentences, n, seed, f"synthesised wiki-offline {split} sentences", at_most, "utterances")
    spoken = synthesized_speech([sentences[uid] for uid in picked])
    return [Utterance(uid, u.audio, u.text) for uid, u in zip(picked, spoken, strict=True)]


def load_speech(
    source: str, n: int | None = None, seed: int = 0, at_most: bool = False, online: bool = True
) -> list[Utterance]:
    """Utterances of a named set (`HUB_SETS`, `SYNTHESIZED_SETS`, "librivox-offline") or of a local folder.

    A folder, like the packaged speech, is one set: keep calibration and test folders apart.
    With `at_most`, `n` caps the set instead of demanding that many. LibriSpeech needs `online`.
    """
    if source in HUB_SETS:
        return librispeech(HUB_SETS[source], n, seed, at_most, online)
    if source in SYNTHESIZED_SETS:
        return synthesized_wiki(SYNTHESIZED_SETS[source], n, seed, at_most)
    if source == OFFLINE:
        return packaged_speech(n, seed, at_most)
    path = Path(source).expanduser()
    if path.is_dir():
        return local_folder(path, n, seed, at_most)
    raise ZooError(
        f"unknown speech set {source!r}: neither one of "
        f"{', '.join([*HUB_SETS, *SYNTHESIZED_SETS, OFFLINE])} nor an existing folder"
    )
