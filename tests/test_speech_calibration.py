"""Speech sets: WAV decoding, resampling, both folder layouts, their errors, seeded subsets,
the Hub's offline error, synthesis, and the packaged LibriVox speech (slow)."""

import io
import shutil
import sys
import wave

import numpy as np
import pytest

from zoo.calibration import speech
from zoo.calibration.speech import (
    SAMPLE_RATE,
    Utterance,
    decode_audio,
    load_speech,
    local_folder,
    packaged_speech,
    resample,
    speakable_sentences,
    speech_fingerprint,
    synthesized_speech,
)
from zoo.calibration.subsets import seeded_pick
from zoo.errors import ZooError


def wav_bytes(samples: np.ndarray, rate: int, width: int = 2) -> bytes:
    """Integer PCM WAV of float samples in [-1, 1], shaped (frames,) or (frames, channels)."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    ints = np.round(frames * (2 ** (8 * width - 1) - 1)).astype("<i4")
    raw = ints.view(np.uint8).reshape(len(frames), frames.shape[1], 4)[:, :, :width]  # little-endian low bytes
    if width == 1:
        raw = (ints + 128).astype(np.uint8)[..., None]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw.tobytes())
    return buf.getvalue()


def sine(freq: float, rate: int, seconds: float) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def peak_hz(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wav_of_every_width_decodes_to_the_same_float_samples(width):
    x = sine(440, SAMPLE_RATE, 0.1)
    got = decode_audio(wav_bytes(x, SAMPLE_RATE, width), "a.wav")
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.abs(got - x).max() < max(2.5 / 2 ** (8 * width - 1), 1e-7)  # float32 limits 32-bit


def test_stereo_is_averaged_to_mono():
    left, right = sine(440, SAMPLE_RATE, 0.05), sine(1000, SAMPLE_RATE, 0.05)
    got = decode_audio(wav_bytes(np.stack([left, right], axis=1), SAMPLE_RATE), "stereo.wav")
    np.testing.assert_allclose(got, (left + right) / 2, atol=1e-4)


@pytest.mark.parametrize("rate, freq", [(44_100, 1000.0), (8_000, 440.0), (22_050, 3000.0), (48_000, 250.0)])
def test_resampling_keeps_frequency_and_duration(rate, freq):
    got = decode_audio(wav_bytes(sine(freq, rate, 1.0), rate), "tone.wav")
    assert abs(len(got) - SAMPLE_RATE) <= 1  # one second stays one second
    assert abs(peak_hz(got) - freq) <= 2.0
    middle = got[2000:-2000]  # away from the filter's edge effects
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.01  # amplitude kept


def test_resampling_removes_what_16_khz_cannot_hold():
    """A 12 kHz tone at 44.1 kHz is above the 8 kHz Nyquist limit: filtered, not aliased to 4 kHz."""
    got = resample(sine(12_000, 44_100, 1.0).astype(np.float32), 44_100)
    assert np.sqrt(np.mean(got[2000:-2000] ** 2)) < 0.01


def test_stdlib_wav_matches_soundfile():
    sf = pytest.importorskip("soundfile")
    x = sine(300, 22_050, 0.3)
    data = wav_bytes(x, 22_050)
    ref, rate = sf.read(io.BytesIO(data), dtype="float32")
    np.testing.assert_allclose(decode_audio(data, "a.wav"), resample(ref, rate), atol=1e-6)


def test_flac_and_float_wav_decode_through_soundfile(tmp_path):
    sf = pytest.importorskip("soundfile")
    x = sine(500, 8_000, 0.5)
    sf.write(tmp_path / "a.flac", x, 8_000)
    sf.write(tmp_path / "b.wav", x, 8_000, subtype="FLOAT")  # not integer PCM: the stdlib refuses it
    for name in ("a.flac", "b.wav"):
        got = decode_audio((tmp_path / name).read_bytes(), name)
        assert abs(len(got) - 8_000) <= 1 and abs(peak_hz(got) - 500) <= 2.0


def test_undecodable_and_empty_audio_name_the_file():
    with pytest.raises(ZooError, match="broken.wav"):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVEjunkjunk", "broken.wav")
    with pytest.raises(ZooError, match=r"empty\.wav is empty"):
        decode_audio(wav_bytes(np.zeros(0), SAMPLE_RATE), "empty.wav")
    with pytest.raises(ZooError, match="garbage.flac"):
        decode_audio(b"not audio at all", "garbage.flac")


def test_without_soundfile_wav_decodes_and_flac_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    assert len(decode_audio(wav_bytes(sine(440, 8_000, 0.5), 8_000), "a.wav")) == 8_000
    with pytest.raises(ZooError, match=r"x\.flac.*pip install soundfile"):
        decode_audio(b"fLaC...", "x.flac")
    if shutil.which("flite"):
        assert len(synthesized_speech(["Hello."])) == 1  # its WAV needs no soundfile


def write_librispeech(root, chapters: dict[tuple[str, str], dict[str, str]], rate=SAMPLE_RATE) -> None:
    """LibriSpeech's layout: speaker/chapter/ with <id>.wav files and one <speaker>-<chapter>.trans.txt."""
    for (speaker, chapter), lines in chapters.items():
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(f"{u} {t}\n" for u, t in lines.items()))
        for k, uid in enumerate(lines):
            (folder / f"{uid}.wav").write_bytes(wav_bytes(sine(200 + 100 * k, rate, 0.25 + 0.25 * k), rate))


def test_librispeech_layout_parses_ids_and_texts(tmp_path):
    write_librispeech(
        tmp_path,
        {
            ("84", "121123"): {"84-121123-0000": "GO DO YOU HEAR", "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES"},
            ("174", "50561"): {"174-50561-0000": "FORGOTTEN TOO THE NAME OF GILLIAN"},
        },
    )
    got = local_folder(tmp_path)
    assert [u.id for u in got] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert [u.text for u in got] == [
        "FORGOTTEN TOO THE NAME OF GILLIAN",
        "GO DO YOU HEAR",
        "BUT IN LESS THAN FIVE MINUTES",
    ]
    assert [round(u.seconds, 3) for u in got] == [0.25, 0.25, 0.5]
    assert all(u.audio.dtype == np.float32 for u in got)


def test_simple_layout_reads_name_txt_beside_name_wav_at_any_rate(tmp_path):
    (tmp_path / "one.wav").write_bytes(wav_bytes(sine(440, 44_100, 0.5), 44_100))
    (tmp_path / "one.txt").write_text("  Mr. Smith\npaid twenty dollars.\n")
    (tmp_path / "two.wav").write_bytes(wav_bytes(sine(440, 8_000, 1.0), 8_000))
    (tmp_path / "two.txt").write_text("hello")
    (tmp_path / "notes.md").write_text("not an utterance")
    one, two = local_folder(tmp_path)
    assert (one.id, one.text, len(one.audio)) == ("one", "Mr. Smith paid twenty dollars.", 8_000)
    assert (two.id, two.text, len(two.audio)) == ("two", "hello", 16_000)


def test_missing_transcript_names_the_utterance(tmp_path):
    write_librispeech(tmp_path, {("1", "2"): {"1-2-0000": "A"}})
    (tmp_path / "1" / "2" / "1-2-0001.wav").write_bytes(wav_bytes(sine(300, SAMPLE_RATE, 0.1), SAMPLE_RATE))
    with pytest.raises(ZooError, match=r"no transcript for utterance '1-2-0001'"):
        local_folder(tmp_path, n=1, seed=0)  # checked whatever the pick


def test_folder_errors(tmp_path):
    with pytest.raises(ZooError, match="holds no utterances"):
        local_folder(tmp_path)
    with pytest.raises(ZooError, match="does not exist"):
        local_folder(tmp_path / "nowhere")
    (tmp_path / "bad.wav").write_bytes(b"RIFF")
    (tmp_path / "bad.txt").write_text("x")
    with pytest.raises(ZooError, match="bad.wav"):
        local_folder(tmp_path)
    (tmp_path / "bad.wav").write_bytes(wav_bytes(np.zeros(0), SAMPLE_RATE))
    with pytest.raises(ZooError, match=r"bad\.wav is empty"):
        local_folder(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.flac").write_bytes(b"")
    with pytest.raises(ZooError, match="share the utterance id 'bad'"):
        local_folder(tmp_path)


def test_seeded_subsets_are_deterministic_nested_and_bounded(tmp_path):
    ids = [f"u{i:02d}" for i in range(40)]
    a = seeded_pick(ids, 10, seed=0, source="x")
    assert a == seeded_pick(list(reversed(ids)), 10, seed=0, source="x") == sorted(a)
    assert set(a) < set(seeded_pick(ids, 11, seed=0, source="x"))
    assert a != seeded_pick(ids, 10, seed=1, source="x")
    assert seeded_pick(ids, None, seed=3, source="x") == ids
    with pytest.raises(ZooError, match="40 utterances, fewer than the 41"):
        seeded_pick(ids, 41, seed=0, source="x", what="utterances")
    with pytest.raises(ZooError, match="at least 1"):
        seeded_pick(ids, 0, seed=0, source="x")


def test_folder_subset_decodes_the_picked_utterances(tmp_path):
    write_librispeech(tmp_path, {("7", "8"): {f"7-8-{k:04d}": f"TEXT {k}" for k in range(6)}})
    got = local_folder(tmp_path, n=3, seed=5)
    assert [u.id for u in got] == seeded_pick([f"7-8-{k:04d}" for k in range(6)], 3, 5, "x")
    assert [u.text for u in got] == [f"TEXT {int(u.id[-4:])}" for u in got]
    assert speech_fingerprint(got) == speech_fingerprint(local_folder(tmp_path, n=3, seed=5))
    assert speech_fingerprint(got) != speech_fingerprint(local_folder(tmp_path, n=3, seed=6))


def test_fingerprint_sees_the_samples():
    a = Utterance("x", np.zeros(10, np.float32), "t")
    b = Utterance("x", np.r_[np.zeros(9), 1e-6].astype(np.float32), "t")
    assert speech_fingerprint([a]) != speech_fingerprint([b])


def test_load_speech_by_name_and_path(tmp_path, monkeypatch):
    write_librispeech(tmp_path, {("1", "2"): {"1-2-0000": "A B"}})
    assert [u.id for u in load_speech(str(tmp_path))] == ["1-2-0000"]
    with pytest.raises(
        ZooError,
        match="librispeech, librispeech-other, librispeech-validation-clean, .*, "
        "librispeech-test-other, tts-wiki-train, tts-wiki-test, librivox-offline",
    ):
        load_speech("libri-speech")
    asked = []
    monkeypatch.setattr(speech, "librispeech", lambda split, n, seed, at_most, online: asked.append((split, n, seed)))
    for name in ("librispeech", "librispeech-other", "librispeech-test-clean", "librispeech-test-other"):
        load_speech(name, 7, 3)
    assert asked == [("validation.clean", 7, 3), ("validation.other", 7, 3), ("test.clean", 7, 3), ("test.other", 7, 3)]


def test_librispeech_offline_says_to_pass_a_folder(monkeypatch):
    with pytest.raises(ZooError, match="openslr/librispeech_asr.*unreachable.*local folder"):
        speech.librispeech("test.other", online=False)
    with pytest.raises(ZooError, match="openslr/librispeech_asr.*unreachable.*local folder"):
        load_speech("librispeech", online=False)
    with pytest.raises(ZooError, match="known: validation.clean, test.clean, validation.other, test.other"):
        speech.librispeech("dev.clean")


def test_hub_rows_decode_from_bytes_or_path(tmp_path):
    data = wav_bytes(sine(440, 8_000, 0.5), 8_000)
    (tmp_path / "x.wav").write_bytes(data)
    from_bytes = speech._hub_audio({"bytes": data, "path": "x.wav"}, "x")
    from_path = speech._hub_audio({"bytes": None, "path": str(tmp_path / "x.wav")}, "x")
    np.testing.assert_array_equal(from_bytes, from_path)
    assert len(from_bytes) == 8_000


def test_synthesis_without_the_program_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ZooError, match="needs flite, which is not installed.*apt-get install flite"):
        synthesized_speech(["hello"])
    with pytest.raises(ZooError, match="needs espeak-ng"):
        synthesized_speech(["hello"], program="espeak-ng")
    with pytest.raises(ZooError, match="unknown speech synthesizer 'say'"):
        synthesized_speech(["hello"], program="say")


@pytest.mark.parametrize("program", ["flite", "espeak-ng"])
def test_synthesis_gives_16_khz_speech_with_its_text(program):
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello."]
    got = synthesized_speech(texts, program=program)
    assert [u.text for u in got] == texts and [u.id for u in got] == ["synth-0000", "synth-0001"]
    assert 1.0 < got[0].seconds < 6.0 and got[1].seconds < got[0].seconds
    assert all(np.abs(u.audio).max() > 0.05 for u in got)
    with pytest.raises(ZooError, match="blank"):
        synthesized_speech(["ok", " "], program=program)
    with pytest.raises(ZooError, match="voice"):
        synthesized_speech(["hello"], voice="nosuchvoice", program=program)


@pytest.mark.slow
def test_packaged_librivox_speech():
    got = packaged_speech()
    assert len(got) == 5
    assert got[1].id == "sense_and_sensibility_01_austen_64kb-0880"
    assert got[1].text == "he was not an ill disposed young man"
    for u in got:
        assert u.audio.dtype == np.float32 and 2.0 < u.seconds < 10.0
        assert 0.1 < np.abs(u.audio).max() <= 1.0 and len(u.text.split()) >= 5
    assert 20 < sum(u.seconds for u in got) < 30
    assert [u.id for u in load_speech("librivox-offline", n=2, seed=0)] == seeded_pick([u.id for u in got], 2, 0, "x")


def test_librispeech_from_the_hub_decodes_the_seeded_pick(monkeypatch):
    """The Hub path on a local stand-in for the Hub set: the same columns and Audio feature."""
    import datasets

    ids = [f"1-2-{k:04d}" for k in range(8)]
    rate = 8_000
    table = datasets.Dataset.from_dict(
        {
            "id": ids,
            "text": [f"TEXT {k}" for k in range(8)],
            "audio": [
                {"bytes": wav_bytes(sine(300, rate, 0.1 * (k + 1)), rate), "path": f"{uid}.wav"}
                for k, uid in enumerate(ids)
            ],
        }
    ).cast_column("audio", datasets.Audio(sampling_rate=SAMPLE_RATE))
    asked = []

    def load_dataset(path, name, split):
        asked.append((path, name, split))
        return table

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    got = load_speech("librispeech-test-other", n=3, seed=2)
    assert asked == [("openslr/librispeech_asr", "other", "test")]
    assert [u.id for u in got] == seeded_pick(ids, 3, 2, "x")
    for u in got:
        k = ids.index(u.id)
        assert u.text == f"TEXT {k}" and len(u.audio) == int(SAMPLE_RATE * 0.1 * (k + 1))


def test_speakable_sentences_keep_train_and_test_apart_and_read_as_written():
    train, test = speakable_sentences("train"), speakable_sentences("test")
    assert len(train) > 1000 and len(test) > 200
    assert not set(train) & set(test)
    for sentence in train[:200] + test[:200]:
        assert not any(ch.isdigit() for ch in sentence) and "(" not in sentence
        assert 6 <= len(sentence.split()) <= 30 and sentence[-1] in ".!?"


def test_evaluation_limit_caps_a_small_set_but_calibration_demands_it(tmp_path):
    for i in range(2):
        (tmp_path / f"a{i}.wav").write_bytes(wav_bytes(np.full(1600, 0.01 * (i + 1)), 16000))
        (tmp_path / f"a{i}.txt").write_text(f"text {i}")
    assert len(load_speech(str(tmp_path), 60, at_most=True)) == 2
    with pytest.raises(ZooError, match="fewer than the 60 requested"):
        load_speech(str(tmp_path), 60)
