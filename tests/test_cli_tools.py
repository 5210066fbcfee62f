"""The small `tlama` commands around a run: generate, tokenizer train, plot, convert, and the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tlama_core.cli import main
from tlama_core.cli.generate import configured_tokenizer, resolve_tokenizer
from tlama_core.data import builtin_tokenizer_path, load_tokenizer
from tlama_core.models import generate, load_model
from tlama_core.models.loading import CHECKPOINT, Weights

TINY = ["--model.config.d_model", "32", "--model.config.n_layers", "2", "--model.config.n_heads", "4",
        "--model.config.n_kv_heads", "2", "--model.config.max_seq_len", "64", "--model.scheduler.warmup_steps", "1",
        "--model.scheduler.max_steps", "4", "--data.batch_size", "4", "--data.seq_length", "32",
        "--trainer.total_batch_size", "256", "--trainer.steps", "4", "--trainer.epochs", "1",
        "--trainer.validation_steps", "2", "--trainer.validation_batches", "2", "--trainer.checkpoint_steps", "2",
        "--trainer.log_steps", "1", "--trainer.verbose", "false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 4-step run: RUN/checkpoints (step 2, step 4, best, config.yaml) and RUN/logs/train_log.csv."""
    root = tmp_path_factory.mktemp("run")
    main(["fit", *TINY, "--trainer.checkpoints_dir", str(root / "checkpoints"),
          "--trainer.logs_dir", str(root / "logs")])
    return root


def test_generate_prints_the_prompt_and_the_requested_number_of_tokens(run, capsys):
    main(["generate", "--checkpoint", str(run / "checkpoints"), "--prompt", "ROMEO:", "--max_new_tokens", "12",
          "--temperature", "0"])
    printed = capsys.readouterr().out

    sp = load_tokenizer(builtin_tokenizer_path())
    model = load_model(run / "checkpoints" / "step=00000004.ckpt")  # the directory's newest
    prompt = sp.encode("ROMEO:")
    ids = generate(model, torch.tensor([prompt]), max_new_tokens=12, temperature=0)[0].tolist()
    assert len(ids) == len(prompt) + 12
    assert printed == sp.decode(ids) + "\n"
    assert printed.startswith("ROMEO:")


def test_generate_with_a_seed_repeats_its_sample(run, capsys):
    args = ["generate", "--checkpoint", str(run / "checkpoints" / "step=00000002.ckpt"), "--prompt", "KING",
            "--max_new_tokens", "20", "--seed", "3"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


def test_generate_runs_past_max_seq_len_by_cropping_unless_told_not_to(run, capsys):
    main(["generate", "--checkpoint", str(run / "checkpoints"), "--prompt", "ROMEO:", "--max_new_tokens", "100",
          "--seed", "1"])
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:")
    assert len(text) > 100  # 100 tokens past a 64-token max_seq_len, each at least one character
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--checkpoint", str(run / "checkpoints"), "--prompt", "ROMEO:", "--max_new_tokens", "100",
              "--crop_context", "false"])
    assert exit_.value.code == 2
    assert "max_seq_len=64" in capsys.readouterr().err


def test_generate_without_a_checkpoint_exits_2_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x"])
    assert exit_.value.code == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_tokenizer_defaults_to_the_one_the_run_used(tmp_path):
    ckpt = tmp_path / "step=00000001.ckpt"
    weights = Weights(CHECKPOINT, ckpt)
    assert resolve_tokenizer(weights) == builtin_tokenizer_path()  # no config.yaml: the built-in one
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"tokenizer_path": None}}))
    assert resolve_tokenizer(weights) == builtin_tokenizer_path()  # the run used the built-in one
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"tokenizer_path": "my.model"}}))
    assert resolve_tokenizer(weights) == Path("my.model")
    assert resolve_tokenizer(weights, "given.model") == Path("given.model")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"tokenizer_path": "shakespeare-bpe-2048"}}))
    assert resolve_tokenizer(weights) == builtin_tokenizer_path(2048)  # a shipped tokenizer, by name
    assert resolve_tokenizer(weights, "shakespeare-bpe-1024") == builtin_tokenizer_path(1024)


def test_a_run_on_token_ids_names_no_tokenizer_so_none_is_guessed(tmp_path):
    ids, text = tmp_path / "train.bin", tmp_path / "corpus.txt"
    ids.write_bytes(bytes(64))
    text.write_text("some text\n")
    ckpt = tmp_path / "step=00000001.ckpt"
    for data, expected in [({"train_path": str(ids), "tokenizer_path": None}, None),
                           ({"train_path": str(text), "tokenizer_path": None}, builtin_tokenizer_path()),
                           ({"train_path": None}, builtin_tokenizer_path()),
                           ({"class_path": "x.Y", "init_args": {"train_path": str(ids), "tokenizer_path": "t.model"}},
                            Path("t.model")),
                           ({"train_path": str(tmp_path / "gone.bin"), "tokenizer_path": None}, None)]:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": data}))
        assert configured_tokenizer(ckpt) == expected, data


def test_fit_keeps_the_run_tokenizer_beside_its_checkpoints(run):
    (copy,) = (run / "checkpoints").glob("tokenizer-*")
    assert (copy / builtin_tokenizer_path().name).read_bytes() == builtin_tokenizer_path().read_bytes()
    for ckpt in (run / "checkpoints").glob("step=*.ckpt"):
        assert resolve_tokenizer(Weights(CHECKPOINT, ckpt)) == copy / builtin_tokenizer_path().name


def test_tokenizer_train_writes_a_model_of_the_requested_size(data_text, tmp_path, capsys):
    second = tmp_path / "more.txt"
    second.write_text("To be, or not to be, that is the question.\n" * 50)
    out = tmp_path / "tok" / "small.model"
    main(["tokenizer", "train", "--input", str(data_text), str(second), "--vocab_size", "300", "--output", str(out)])
    assert str(out) in capsys.readouterr().out
    sp = load_tokenizer(out)
    assert sp.vocab_size == 300
    assert sp.decode(sp.encode("To be, or not to be")) == "To be, or not to be"


def test_plot_writes_a_png_beside_the_log(run, capsys):
    main(["plot", str(run / "logs" / "train_log.csv")])
    png = run / "logs" / "train_log.png"
    assert str(png) in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_to_a_named_file(run, tmp_path):
    main(["plot", str(run / "logs" / "train_log.csv"), "-o", str(tmp_path / "loss.png")])
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_plot_without_matplotlib_says_how_to_install_it(run, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as exit_:
        main(["plot", str(run / "logs" / "train_log.csv")])
    assert exit_.value.code == 2
    assert 'pip install "tlama-core[plot]"' in capsys.readouterr().err


def test_plot_of_a_missing_log_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plot", str(tmp_path / "nope.csv")])
    assert exit_.value.code == 2
    assert "nope.csv" in capsys.readouterr().err


def test_convert_to_hf_and_back_keeps_the_model(run, tmp_path):
    main(["convert", "to-hf", "--checkpoint", str(run / "checkpoints"), "--out", str(tmp_path / "hf")])
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.model"}
    main(["convert", "from-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")])

    original = load_model(run / "checkpoints" / "step=00000004.ckpt")
    converted = load_model(tmp_path / "ours")
    tokens = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(converted(tokens)[0], original(tokens)[0], rtol=1e-4, atol=1e-4)


def test_generate_and_convert_read_safetensors_and_hugging_face_directories(run, tmp_path, capsys):
    main(["convert", "to-hf", "--checkpoint", str(run / "checkpoints"), "--out", str(tmp_path / "hf")])
    main(["convert", "from-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")])
    main(["convert", "to-hf", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "hf2")])
    assert "with the tokenizer" in capsys.readouterr().out  # the one from-hf carried into ours
    assert (tmp_path / "hf2" / "tokenizer.model").read_bytes() == builtin_tokenizer_path().read_bytes()
    samples = []
    for weights in (run / "checkpoints", tmp_path / "ours", tmp_path / "hf", tmp_path / "hf2"):
        main(["generate", "--checkpoint", str(weights), "--prompt", "ROMEO:", "--max_new_tokens", "8",
              "--temperature", "0", "--tokenizer", str(builtin_tokenizer_path())])
        samples.append(capsys.readouterr().out)
    assert samples[0].startswith("ROMEO:") and samples == [samples[0]] * 4


def test_console_script_runs_generate(run):
    script = Path(sys.executable).with_name("tlama")
    assert script.is_file(), "the `tlama` console script is missing: pip install -e ."
    done = subprocess.run([str(script), "generate", "--checkpoint", str(run / "checkpoints"), "--prompt", "ROMEO:",
                           "--max_new_tokens", "5", "--seed", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ROMEO:")


def test_convert_to_hf_without_a_known_tokenizer_writes_the_weights_alone(tmp_path, capsys):
    from trainer_utils import WindowLoader, tiny_model

    from tlama_core.training import Trainer

    trainer = Trainer(tiny_model(), WindowLoader(16, 4, 16), total_batch_size=64, verbose=False,
                      checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"))
    checkpoint = trainer._save_checkpoint()  # a Python run: no config.yaml says which tokenizer it used
    main(["convert", "to-hf", "--checkpoint", checkpoint, "--out", str(tmp_path / "hf")])
    assert "wrote the weights alone; pass --tokenizer" in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["bos_token_id"] is None

    with pytest.raises(SystemExit):  # a 64-id model; the built-in tokenizer has 1024 pieces
        main(["convert", "to-hf", "--checkpoint", checkpoint, "--out", str(tmp_path / "hf2"), "--tokenizer",
              str(builtin_tokenizer_path())])
    assert "tokenizer has 1024 pieces but the model's vocab_size is 64" in capsys.readouterr().err
    assert not (tmp_path / "hf2").exists()


def test_generate_with_a_file_that_is_not_a_tokenizer_exits_2_naming_it(run, tmp_path, capsys):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--checkpoint", str(run / "checkpoints"), "--prompt", "ROMEO:", "--tokenizer", str(bad)])
    assert exit_.value.code == 2
    assert "bad.model" in capsys.readouterr().err


def test_generate_reads_a_hugging_face_directory_with_its_own_tokenizer_and_refuses_to_guess_one(run, tmp_path,
                                                                                                  capsys):
    main(["convert", "to-hf", "--checkpoint", str(run / "checkpoints"), "--out", str(tmp_path / "hf")])
    main(["convert", "from-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")])
    capsys.readouterr()
    main(["generate", "--checkpoint", str(run / "checkpoints"), "--prompt", "ROMEO:", "--max_new_tokens", "8",
          "--temperature", "0"])
    expected = capsys.readouterr().out
    main(["generate", "--checkpoint", str(tmp_path / "hf"), "--prompt", "ROMEO:", "--max_new_tokens", "8",
          "--temperature", "0"])  # its tokenizer.model, written by to-hf
    assert capsys.readouterr().out == expected
    bare = tmp_path / "hf-without-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    main(["convert", "from-hf", "--model", str(bare), "--out", str(tmp_path / "ours")])  # over the earlier one
    assert "holds no tokenizer" in capsys.readouterr().err
    assert not list((tmp_path / "ours").glob("tokenizer*"))  # the earlier model's tokenizer went with it
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--checkpoint", str(tmp_path / "ours"), "--prompt", "ROMEO:"])
    assert exit_.value.code == 2
    assert "hold no tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["tokenizer.model", "tokenizer.json"])
def test_from_hf_carries_the_tokenizer_so_generate_and_evaluate_need_no_flag(run, tmp_path, capsys, kind):
    from tlama_core.data.hf_tokenizer import train_hf_bpe
    from tlama_core.models import find_weights

    corpus = tmp_path / "held_out.txt"
    corpus.write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 40, encoding="utf-8")
    original = builtin_tokenizer_path() if kind == "tokenizer.model" else train_hf_bpe(corpus, tmp_path / "bpe", 300)
    main(["convert", "to-hf", "--checkpoint", str(run / "checkpoints"), "--out", str(tmp_path / "hf"),
          "--tokenizer", str(original)])
    main(["convert", "from-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")])
    assert f"with the tokenizer {kind}" in capsys.readouterr().out

    carried, reference = load_tokenizer(resolve_tokenizer(find_weights(tmp_path / "ours"))), load_tokenizer(original)
    text = corpus.read_text(encoding="utf-8")
    assert carried.encode(text) == reference.encode(text)
    assert (carried.vocab_size, carried.bos_id, carried.eos_id) == (reference.vocab_size, reference.bos_id,
                                                                    reference.eos_id)
    outputs = []
    for weights, flags in ((tmp_path / "ours", []), (run / "checkpoints", ["--tokenizer", str(original)])):
        main(["generate", "--checkpoint", str(weights), "--prompt", "ROMEO:", "--max_new_tokens", "8",
              "--temperature", "0", *flags])
        main(["evaluate", "--model", str(weights), "--data", str(corpus), "--seq_length", "16", *flags])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("ROMEO:") and '"loss"' in outputs[0]
