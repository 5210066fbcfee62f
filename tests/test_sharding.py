"""Past one device: Lightning strategy objects through the facade, FSDP2 and tensor parallel on ModelParallelStrategy
(CPU processes on gloo), compared with DDP and with one process."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from torch.distributed.tensor import DTensor
from trainer_utils import WindowLoader, make_trainer, tiny_model

from tlama_core.data import builtin_corpus_path
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import TlamaLightningModule, Trainer
from tlama_core.training.records.metrics import read_rows
from tlama_core.training.sharding import check_tensor_parallel

HERE = Path(__file__).parent
CLIP = 0.6  # shard_run.py's gradient_clip_val


def make(tmp_path: Path, **kwargs) -> Trainer:
    return make_trainer(tmp_path, loader=WindowLoader(32, 4, 16), **{
        "steps": 3, "checkpoint_steps": 3, "validation_steps": 3, "use_mixed_precision": False, "accelerator": "cpu",
        "devices": 1, **kwargs})


def losses(directory: Path) -> list[float]:
    return [float(r["train_loss"]) for r in read_rows(directory / "logs" / "train_log.csv")]


# ---- one process ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", [SingleDeviceStrategy(device="cpu"), DDPStrategy()], ids=["single", "ddp"])
def test_a_lightning_strategy_object_is_the_strategy_the_run_uses(tmp_path, strategy):
    reference = make(tmp_path / "auto")
    reference.train()
    t = make(tmp_path / "object", strategy=strategy)
    assert t._trainer.strategy is strategy
    t.train()
    assert losses(tmp_path / "object") == pytest.approx(losses(tmp_path / "auto"), rel=1e-6)


def test_train_step_with_a_strategy_object_builds_its_own_lightning_trainer(tmp_path):
    t = make(tmp_path, strategy=SingleDeviceStrategy(device="cpu"))
    rows = [t.train_step() for _ in range(2)]
    assert [r["step"] for r in rows] == [1, 2] and t.current_step == 2


def test_fsdp2_on_one_process_trains_as_the_single_device_run(tmp_path):
    reference = make(tmp_path / "auto")
    reference.train()
    t = make(tmp_path / "fsdp2", strategy="fsdp2")
    assert t.optimizer is None  # built once the parameters are sharded
    t.train()
    assert losses(tmp_path / "fsdp2") == pytest.approx(losses(tmp_path / "auto"), rel=1e-5)
    step3 = tmp_path / "fsdp2" / "ckpt" / "step=00000003.ckpt"
    assert step3.is_dir() and (step3 / "__0_0.distcp").is_file()  # a distributed checkpoint


def test_a_module_that_shards_nothing_under_model_parallel_is_an_error(tmp_path):
    class Unsharded(TlamaLightningModule):
        def configure_model(self) -> None:
            pass

    module = Unsharded(model=tiny_model())
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=ModelParallelStrategy(1, 1), max_steps=1,
                        logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="was not sharded.*super\\(\\).configure_model"):
        trainer.fit(module, train_dataloaders=WindowLoader(8, 4, 16))


def plain_model_parallel_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, strategy=ModelParallelStrategy(1, 1), logger=False,
                     enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                     use_distributed_sampler=False, default_root_dir=tmp_path, **kwargs)


def test_a_module_built_in_init_module_on_a_plain_trainer_gets_the_one_process_weights(tmp_path):
    """`trainer.init_module(empty_init=True)` puts the module on the meta device; configure_model then draws the
    weights `Transformer(config)` draws (Lightning's own materialisation would reset them with torch's inits and
    leave the norms uninitialised): the same validation loss and, gathered, the same weights; then it trains."""
    config = tiny_model().config
    torch.manual_seed(5)
    reference = Transformer(config).eval()
    val = WindowLoader(8, 4, 16, seed=1)
    with torch.no_grad():
        expected_loss = sum(float(reference(x, targets=y)[1]) for x, y in val) / len(val)
    trainer = plain_model_parallel_trainer(tmp_path, max_steps=1)
    torch.manual_seed(5)
    with trainer.init_module(empty_init=True):
        module = TlamaLightningModule(config=config)
    assert module.model.output.weight.is_meta
    [result] = trainer.validate(module, dataloaders=val, verbose=False)
    assert result["val_loss"] == pytest.approx(expected_loss, rel=1e-6)
    weights = {n: p.full_tensor() if isinstance(p, DTensor) else p for n, p in module.model.named_parameters()}
    assert sorted(weights) == sorted(n for n, _ in reference.named_parameters())
    assert [n for n, p in reference.named_parameters() if not torch.equal(weights[n].detach(), p.detach())] == []
    trainer.fit(module, train_dataloaders=WindowLoader(8, 4, 16))
    assert trainer.global_step == 1


@pytest.mark.parametrize("precision, compute_dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_fsdp2_computes_in_bf16_with_fp32_parameters_when_the_run_is_bf16(tmp_path, precision, compute_dtype):
    """FSDP2's MixedPrecisionPolicy: the weights a block computes with are bf16 in a bf16-mixed run, the sharded
    parameters the optimizer updates stay fp32."""
    seen = []

    class Dtypes(L.Callback):
        def on_train_start(self, trainer, pl_module):
            wq = pl_module.model.layers[0].attention.wq
            seen.append(wq.weight.dtype)
            wq.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype) and None)

    make(tmp_path, steps=1, strategy="fsdp2", precision=precision, callbacks=[Dtypes()]).train()
    assert seen[0] == torch.float32 and set(seen[1:]) == {compute_dtype} and len(seen) == 3  # 2 micro-batches


def test_muon_under_fsdp2_is_refused_naming_adamw(tmp_path):
    module = TlamaLightningModule(model=tiny_model(), muon=True)
    with pytest.raises(ValueError, match="muon=True with strategy='fsdp2'.*AdamW"):
        Trainer(module, WindowLoader(32, 4, 16), strategy="fsdp2", accelerator="cpu", devices=1, verbose=False,
                checkpoints_dir=str(tmp_path / "c"), logs_dir=str(tmp_path / "l"))


@pytest.mark.parametrize("fields, message", [
    ({"n_heads": 3, "n_kv_heads": 3}, "n_heads=3 and n_kv_heads=3 must be multiples"),
    ({"n_heads": 4, "n_kv_heads": 1}, "n_kv_heads=1 must be multiples"),
    ({"n_heads": 4, "n_kv_heads": 2, "tie_embeddings": True}, "tie_embeddings=True"),
])
def test_tensor_parallel_refuses_a_model_it_cannot_split(fields, message):
    config = TlamaConfig(vocab_size=64, d_model=48, n_layers=1, max_seq_len=8, **fields)
    with pytest.raises(ValueError, match=message):
        check_tensor_parallel(config, 2)


def test_lightnings_device_banner_prints_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        make(tmp_path, verbose=True).train()
    assert sum("GPU available" in r.getMessage() for r in caplog.records) == 1


# ---- several processes ----------------------------------------------------------------------------------------
def launch(script: str, out: Path, *args: str, timeout: int = 300) -> None:
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(Path(builtin_corpus_path()).read_text()[:40_000])
    done = subprocess.run([sys.executable, str(HERE / script), str(out), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]


def column(out: Path, name: str) -> list[float]:
    with open(out / "logs" / "train_log.csv", newline="") as f:
        return [float(r[name]) for r in csv.DictReader(f) if r[name]]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """The reference: 2 processes under DDP, 8 steps, fp32."""
    out = tmp_path_factory.mktemp("ddp")
    launch("shard_run.py", out, "ddp", "2")
    return out


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2")
    launch("shard_run.py", out, "fsdp2", "2")
    return out


@pytest.mark.slow
def test_fsdp2_on_two_processes_trains_as_ddp_does(ddp_run, fsdp2_run):
    assert column(fsdp2_run, "train_loss") == pytest.approx(column(ddp_run, "train_loss"), rel=1e-4)
    assert column(fsdp2_run, "val_loss") == pytest.approx(column(ddp_run, "val_loss"), rel=1e-4)
    assert len(column(fsdp2_run, "val_loss")) == 2 and len(column(fsdp2_run, "train_loss")) == 8
    assert column(fsdp2_run, "grad_norm") == pytest.approx(column(ddp_run, "grad_norm"), rel=1e-3)  # global norm
    assert min(column(ddp_run, "grad_norm")) < CLIP < max(column(ddp_run, "grad_norm"))  # steps clipped and not
    # Each process saved its own shards; one CSV log, written once.
    for step in (4, 8):
        shards = sorted(p.name for p in (fsdp2_run / "ckpt" / f"step={step:08d}.ckpt").iterdir())
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert sorted(p.name for p in (fsdp2_run / "logs").iterdir()) == ["train_log.csv"]
    # An all_ranks hook sees, on every process, the row the CSV gets (the loss averaged over processes), under
    # FSDP2 as under DDP.
    for run, rank in ((run, rank) for run in (fsdp2_run, ddp_run) for rank in (0, 1)):
        rows = json.loads((run / f"steps_rank{rank}.json").read_text())
        assert [r["train_loss"] for r in rows] == column(run, "train_loss")
        assert [r["grad_norm"] for r in rows] == column(run, "grad_norm")
        assert json.loads((run / f"val_rank{rank}.json").read_text()) == column(run, "val_loss")


@pytest.mark.slow
def test_a_meta_device_fsdp2_run_resumes_exactly_from_its_sharded_checkpoint(tmp_path, fsdp2_run):
    """Built on the meta device (each process draws only its shards): the same weights, so the same losses as the
    run built on the CPU; stopped at step 4 and resumed, it ends as the uninterrupted run."""
    launch("shard_run.py", tmp_path, "fsdp2", "2", "--steps", "4", "--meta")
    launch("shard_run.py", tmp_path, "fsdp2", "2", "--steps", "8", "--resume", "--meta")
    assert column(tmp_path, "train_loss") == column(fsdp2_run, "train_loss")


@pytest.mark.slow
def test_two_by_two_fsdp2_and_tensor_parallel_train_as_ddp_does_and_resume_under_ddp(tmp_path, ddp_run):
    """4 processes as 2 data-parallel x 2 tensor-parallel (built on the meta device: each draws its 2-D shards;
    each block recomputed in the backward pass) to step 4, then resumed from that sharded checkpoint on 2 DDP
    processes: DDP's losses throughout."""
    launch("shard_run.py", tmp_path, "2x2", "4", "--steps", "4", "--meta", "--ac", timeout=600)
    assert sorted(p.name for p in (tmp_path / "ckpt" / "step=00000004.ckpt").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp", "meta.pt"]
    assert column(tmp_path, "val_loss") == pytest.approx(column(ddp_run, "val_loss")[:1], rel=1e-4)
    assert column(tmp_path, "grad_norm") == pytest.approx(column(ddp_run, "grad_norm")[:4], rel=1e-3)
    launch("shard_run.py", tmp_path, "ddp", "2", "--steps", "8", "--resume")
    assert column(tmp_path, "train_loss") == pytest.approx(column(ddp_run, "train_loss"), rel=1e-6)  # README's bound


@pytest.mark.slow
def test_a_two_process_fsdp2_run_resumes_on_one_process_and_a_one_process_run_on_two(tmp_path, fsdp2_run):
    """The same optimizer steps see the same windows on any number of processes; the accumulation keeps the step's
    tokens and the checkpoint is resharded (a sharded directory into one process, one file into two shards)."""
    down, up = tmp_path / "down", tmp_path / "up"
    launch("shard_run.py", down, "fsdp2", "2", "--steps", "4")
    launch("shard_run.py", down, "fsdp2", "1", "--steps", "8", "--resume")
    assert column(down, "train_loss") == pytest.approx(column(fsdp2_run, "train_loss"), rel=1e-6)  # README's bound
    launch("shard_run.py", up, "auto", "1", "--steps", "4")
    launch("shard_run.py", up, "fsdp2", "2", "--steps", "8", "--resume")
    assert column(up, "train_loss") == pytest.approx(column(fsdp2_run, "train_loss"), rel=1e-6)


@pytest.mark.slow
def test_every_reader_of_a_model_takes_a_two_process_sharded_checkpoint_on_one_process(tmp_path, fsdp2_run):
    """load_model, evaluate, convert to-hf and init_from read the 2-process run's final checkpoint (a shard file
    per process) here, with no process group: the weights the run ended with (their checksum, gathered there)."""
    import torch.distributed as dist

    from tlama_core.cli.convert import convert_to_hf
    from tlama_core.data import builtin_tokenizer_path
    from tlama_core.evaluation import evaluate
    from tlama_core.models import load_model

    step = fsdp2_run / "ckpt" / "step=00000008.ckpt"
    assert sorted(p.name for p in step.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not dist.is_initialized()
    model = load_model(step)
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())  # shard_run.py's full_checksum
    assert checksum == float((fsdp2_run / "weights_rank0.txt").read_text())
    corpus = fsdp2_run / "corpus.txt"
    assert evaluate(step, corpus, builtin_tokenizer_path(), max_batches=2) == evaluate(
        model, corpus, builtin_tokenizer_path(), max_batches=2)
    hf, tokenizer = convert_to_hf(step, tmp_path / "hf")
    assert tokenizer is not None and (hf / "tokenizer.model").is_file()  # the run's, recorded in the checkpoint
    started = TlamaLightningModule(init_from=str(step)).model
    for other in (load_model(hf), started):
        for (name, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
            assert torch.equal(p, q), name


@pytest.mark.slow
def test_a_two_process_ddp_checkpoint_file_resumes_on_one_process(tmp_path, ddp_run):
    """DDP's checkpoint is one file (rank 0's): a job that lost a process goes on with it on one, with twice the
    accumulation, as the uninterrupted 2-process run does."""
    launch("shard_run.py", tmp_path, "ddp", "2", "--steps", "4")
    assert (tmp_path / "ckpt" / "step=00000004.ckpt").is_file()
    launch("shard_run.py", tmp_path, "auto", "1", "--steps", "8", "--resume")
    assert column(tmp_path, "train_loss") == pytest.approx(column(ddp_run, "train_loss"), rel=1e-6)


@pytest.mark.slow
def test_tlama_fit_with_fsdp2_on_two_processes_and_generate_from_its_sharded_checkpoints(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(Path(builtin_corpus_path()).read_text()[:40_000])
    tlama = Path(sys.executable).with_name("tlama")
    flags = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "fsdp2",
             "--trainer.total_batch_size", "256", "--trainer.epochs", "1", "--trainer.steps", "4",
             "--trainer.checkpoint_steps", "1",
             "--trainer.keep_checkpoints", "2", "--trainer.validation_steps", "2", "--trainer.validation_batches",
             "2", "--trainer.verbose", "false", "--data.train_path", str(corpus), "--data.batch_size", "2",
             "--data.seq_length", "32", "--data.cache_dir", str(tmp_path / "cache"), "--model.config.d_model", "32",
             "--model.config.n_layers", "2", "--model.config.n_heads", "4", "--model.config.n_kv_heads", "2",
             "--model.config.max_seq_len", "32", "--model.muon", "false"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([str(tlama), "fit", *flags], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "checkpoints"
    steps = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step="))
    assert steps == ["step=00000003.ckpt", "step=00000004.ckpt"] and all((ckpt / s).is_dir() for s in steps)
    sample = subprocess.run([str(tlama), "generate", "--checkpoint", str(ckpt), "--prompt", "ROMEO:",
                             "--max_new_tokens", "5", "--seed", "0"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:"), sample.stderr[-2000:]


@pytest.mark.slow
def test_a_plain_lightning_trainer_with_model_parallel_strategy_shards_and_synchronises(tmp_path, ddp_run):
    """The module on lightning.Trainer(strategy=ModelParallelStrategy(2, 1)): it shards, so the gradients are
    averaged and the loss is DDP's (unsharded replicas drift apart from the first update)."""
    launch("shard_run.py", tmp_path, "2x1", "2", "--plain")
    plain = [json.loads((tmp_path / f"plain_rank{r}.json").read_text()) for r in (0, 1)]
    assert plain[0] == plain[1]
    assert plain[0] == pytest.approx(column(ddp_run, "train_loss"), rel=1e-4)


@pytest.mark.slow
def test_train_step_under_fsdp2_steps_as_train_does(tmp_path, fsdp2_run):
    launch("shard_run.py", tmp_path, "fsdp2", "2", "--stepping", "3")
    for rank in (0, 1):
        rows = json.loads((tmp_path / f"stepping_rank{rank}.json").read_text())
        assert [r["train_loss"] for r in rows] == pytest.approx(column(fsdp2_run, "train_loss")[:3], rel=1e-6)


@pytest.mark.slow
def test_a_nan_in_one_processs_shard_stops_every_process_before_the_checkpoint(tmp_path):
    """The finite-weights check on FSDP2 shards: each process checks its own and they agree, so a NaN that only
    rank 1 holds stops both at the same step, with its checkpoint unwritten and the last good one named."""
    launch("shard_run.py", tmp_path, "fsdp2", "2", "--poison", "8")
    for rank in (0, 1):
        error = (tmp_path / f"error_rank{rank}.txt").read_text()
        assert error.startswith("the weights hold non-finite values (nan/inf) at step 8") and "step=00000004" in error
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step=")) == [
        "step=00000004.ckpt"]


@pytest.mark.slow
def test_a_meta_device_model_gets_the_one_process_weights_shard_by_shard(tmp_path):
    launch("shard_init.py", tmp_path, timeout=300)
    for layout in ("2x1", "1x2"):
        for rank in (0, 1):
            report = json.loads((tmp_path / f"init_{layout}_rank{rank}.json").read_text())
            assert report["differ"] == [] and report["names_equal"] and report["rope_equal"], (layout, report)
            assert report["all_sharded"] and report["next_draw_equal"], (layout, report)
            assert report["local_bytes"] < 0.55 * report["full_bytes"], (layout, report)  # about half on each


def test_model_parallel_sizes_that_do_not_make_the_process_count_are_refused_when_built(tmp_path):
    with pytest.raises(ValueError, match=r"data_parallel_size=2, tensor_parallel_size=2\) needs 4 processes, and "
                                         r"devices x num_nodes gives 1"):
        make(tmp_path, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2))
