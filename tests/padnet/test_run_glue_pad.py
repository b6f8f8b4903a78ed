"""``padnet/moe/run_glue_pad.py``: tiny end-to-end runs, resume, metrics, MLflow and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from common.data import read_glue
from common.errors import UserError, run_cli
from padnet.moe.data import GENERATED_SIZES, generated_sst2, write_generated_sst2
from padnet.moe.imp import moe_snip_scores, pad_moe_masks
from padnet.moe.modeling import moe_aux_loss, moe_layers
from padnet.moe.run_glue_pad import (
    GlueArgumentError,
    ModelArguments,
    PadTrainer,
    PadTrainingArguments,
    PruneArguments,
    _minilm_path,
    glue_metrics,
    load_model,
    main,
    parse_args,
)

REPO = Path(__file__).resolve().parents[2]
FAST = ["--max_seq_length", "16", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--disable_tqdm", "true", "--use_cpu", "true", "--report_to", "none"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT (hidden 16) with the packaged MiniLM tokenizer, saved as a pretrained folder."""
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(_minilm_path()).save_pretrained(path)
    return str(path)


def _masks(folder: Path) -> dict[str, torch.Tensor]:
    state = load_file(str(folder / "model.safetensors"))
    return {k: v for k, v in state.items() if k.endswith(".mask")}


def test_generated_task_is_deterministic_balanced_and_sst2_format(tmp_path):
    train = generated_sst2("train")
    assert train == generated_sst2("train") and train != generated_sst2("train", seed=1)
    assert len(train) == GENERATED_SIZES["train"] and 0.4 < np.mean([r["label"] for r in train]) < 0.6
    assert any(" not " in r["sentence"] for r in train)
    write_generated_sst2(tmp_path)
    assert read_glue("sst2", tmp_path, "dev") == generated_sst2("dev")


def test_glue_metrics_per_task():
    preds, labels = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert glue_metrics("sst2", preds, labels) == {"accuracy": 0.75}
    cola = glue_metrics("cola", preds, labels)
    assert set(cola) == {"matthews_correlation"} and cola["matthews_correlation"] == pytest.approx(np.sqrt(1 / 3))
    mrpc = glue_metrics("mrpc", preds, labels)
    assert mrpc["f1"] == pytest.approx(0.8) and mrpc["combined_score"] == pytest.approx(0.775)
    stsb = glue_metrics("stsb", np.array([0.1, 0.5, 0.2, 0.9]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert set(stsb) == {"pearson", "spearmanr", "combined_score"} and stsb["spearmanr"] == pytest.approx(0.8)


def test_use_moe_none_is_a_plain_bert_and_the_trainer_adds_the_aux_loss(tiny_bert, tmp_path):
    _, plain = load_model(ModelArguments(model_name_or_path=tiny_bert, use_moe="none"), 2, "sst2")
    assert not moe_layers(plain)
    tokenizer, model = load_model(ModelArguments(model_name_or_path=tiny_bert, use_moe="MoE", pos_moe="int",
                                                 n_experts=4), 2, "sst2")
    args = PadTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = PadTrainer(model=model, args=args, prune_args=PruneArguments())
    batch = dict(tokenizer(["a fine film", "a dull film"], return_tensors="pt"), labels=torch.tensor([1, 0]))
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        task_loss = model(**batch).loss
        assert moe_aux_loss(model) > 0
        assert torch.allclose(loss, task_loss + moe_aux_loss(model))


def test_pad_moe_run_trains_partitions_and_resumes(tiny_bert, tmp_path):
    out = tmp_path / "run"
    args = ["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--use_moe", "PadMoE", "--n_experts", "4",
            "--max_train_samples", "16", "--max_eval_samples", "16", "--length", "1", "--sparsity", "0.3",
            "--max_steps", "2", "--save_steps", "2", "--logging_steps", "1", *FAST]
    results = main(args)
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == results["eval"]["eval_accuracy"]
    assert json.loads((out / "train_results.json").read_text())["dynamic_ratio"] == pytest.approx(0.3, abs=1e-3)
    masks = _masks(out)
    assert len(masks) == 4  # 2 layers x (intermediate, output)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - int(0.7 * total)  # kappa = 0.3, global
    assert torch.equal(_masks(out / "checkpoint-2")["bert.encoder.layer.0.output.dense.mask"],
                       masks["bert.encoder.layer.0.output.dense.mask"])

    # resume: training goes on from step 2 with the checkpoint's mask (IMP does not run again)
    resumed = main([*args[:-len(FAST) - 6], "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
                    "--resume_from_checkpoint", str(out / "checkpoint-2"), *FAST])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]
    for name, mask in _masks(out).items():
        assert torch.equal(mask, masks[name])

    # the saved PAD-MoE folder evaluates as it was (rebuilt from its config, loaded strictly)
    again = main(["--model_name_or_path", str(out), "--output_dir", str(tmp_path / "eval"), "--do_eval",
                  "--max_eval_samples", "16", *FAST])
    assert again["eval"]["eval_loss"] == pytest.approx(resumed["eval"]["eval_loss"], abs=1e-5)


def test_upcycled_pad_moe_partitions_on_data_after_the_warmup_not_by_position(tiny_bert, tmp_path):
    """The script upcycles every expert and the static weight from the same dense FFN, so at initialisation
    dL/dM = g (lambda_d W_e - lambda_s W_static) is exactly zero. IMP before the first step is then an error (not a
    split by layer position); after the fully dynamic warm-up the scores are non-zero and data-dependent, and
    every layer keeps some dynamic and some static entries."""
    base = ["--model_name_or_path", tiny_bert, "--use_moe", "PadMoE", "--n_experts", "4", "--max_train_samples",
            "32", "--max_eval_samples", "8", "--length", "1", "--save_strategy", "no", "--no_mlflow", *FAST]
    with pytest.raises(GlueArgumentError, match="no signal.*--imp_warmup_ratio"):
        main([*base, "--output_dir", str(tmp_path / "at_init"), "--max_steps", "2", "--imp_warmup_ratio", "0"])

    out = tmp_path / "run"
    results = main([*base, "--output_dir", str(out), "--max_steps", "4", "--imp_warmup_ratio", "0.5"])
    assert results["train"]["dynamic_ratio"] == pytest.approx(0.5, abs=1e-3)
    masks = _masks(out)
    assert all(0 < float(m.mean()) < 1 for m in masks.values())  # a positional split: 2 layers 1, 2 layers 0

    tokenizer, model = load_model(ModelArguments(model_name_or_path=str(out)), 2, "generated")
    model.eval()  # no router noise: the two score sets differ by their data only
    pad_masks = pad_moe_masks(model)
    for m in pad_masks.values():
        m.mask.fill_(1.0)
    train = generated_sst2("train")

    def batches(start: int) -> list[dict]:
        chunk = train[start:start + 16]
        enc = tokenizer([r["sentence"] for r in chunk], padding=True, return_tensors="pt")
        return [dict(enc, labels=torch.tensor([r["label"] for r in chunk]))]

    first, second = moe_snip_scores(model, pad_masks, batches(0)), moe_snip_scores(model, pad_masks, batches(64))
    assert all(float(s.max()) > 0 for s in first.values())
    assert all(not torch.allclose(first[n], second[n], rtol=1e-2, atol=0) for n in first)


def test_moe_run_on_real_sst2_logs_to_mlflow(tiny_bert, tmp_path, shared_dir):
    out = tmp_path / "sst2"
    main(["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--task_name", "sst2",
          "--data_dir", str(shared_dir / "data" / "glue" / "SST-2"), "--use_moe", "MoE", "--pos_moe", "out",
          "--n_experts", "2", "--k", "1", "--max_train_samples", "8", "--max_eval_samples", "8", "--max_steps", "1",
          "--save_strategy", "no", "--experiment_name", "padnet_moe_test", *FAST])
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] == 8 and 0 <= results["eval_accuracy"] <= 1
    runs = mlflow.search_runs(experiment_names=["padnet_moe_test"])
    assert len(runs) == 1 and "metrics.eval_accuracy" in runs.columns
    assert runs.iloc[0]["params.use_moe"] == "MoE"


def test_a_local_multi_class_csv_with_string_labels_trains_evaluates_and_predicts(tiny_bert, tmp_path):
    words = {"sport": "match goal team", "politics": "vote law senate", "music": "song band guitar"}
    rows = [f"{words[label].split()[i % 3]} news {i},{label}" for i in range(12) for label in words]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.csv").write_text("text,label\nband news,music\nsenate news,politics\n")
    (tmp_path / "test.csv").write_text("text\ngoal news\n")
    out = tmp_path / "out"
    results = main(["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--train_file",
                    str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv"), "--test_file",
                    str(tmp_path / "test.csv"), "--do_train", "--do_eval", "--do_predict", "--max_steps", "2",
                    "--warmup_ratio", "0.5", "--evaluation_strategy", "no", "--no_cuda", "--no_mlflow",
                    "--ignore_mismatched_sizes", *FAST])  # tiny_bert's classifier has 2 labels, the data 3
    assert results["train"]["train_samples"] == 36 and results["eval"]["eval_samples"] == 2
    assert "eval_accuracy" in results["eval"]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "music", "1": "politics", "2": "sport"}
    predicted = (out / "predict_results_local.txt").read_text().splitlines()
    assert predicted[0] == "index\tprediction" and predicted[1].split("\t")[1] in words


def test_a_classifier_for_another_label_count_is_a_one_line_error(tiny_bert, tmp_path, capsys):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\nc,z\n")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--model_name_or_path", tiny_bert, "--output_dir", str(tmp_path / "out"), "--train_file",
                       str(tmp_path / "train.csv"), "--do_train", "--no_mlflow", *FAST], prog="run_glue_pad.py")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "pass --ignore_mismatched_sizes" in err and "3 of this data" in err


def test_renamed_trainer_flags_map_to_their_transformers_5_names():
    *_, training_args, _, _ = parse_args(["--output_dir", "/tmp/never", "--warmup_ratio", "0.1",
                                          "--evaluation_strategy", "epoch", "--no_cuda"])
    assert (training_args.warmup_steps, training_args.eval_strategy, training_args.use_cpu) == (0.1, "epoch", True)
    with pytest.raises(UserError, match="--warmup_ratio must lie in"):
        parse_args(["--output_dir", "/tmp/never", "--warmup_ratio", "1.5"])


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--output_dir", str(tmp_path / "out"), "--no_mlflow"], prog="run_glue_pad.py")
    assert exc.value.code == 2 and "is an existing file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [
    (["--task_name", "sst5", "--data_dir", "x"], "unknown --task_name 'sst5'"),
    (["--task_name", "rte"], "--task_name rte needs --data_dir"),
    (["--task_name", "rte", "--data_dir", "/nonexistent"], "GLUE file /nonexistent/train.tsv not found"),
    (["--use_moe", "SMoE"], "--use_moe"),
    (["--sparsity", "0"], "--sparsity"),
    (["--sparsity", "1.5"], "--sparsity"),
    (["--k", "9"], "--k must lie in"),
    (["--Lambda", "x"], "--Lambda"),
    (["--imp_warmup_ratio", "1"], "--imp_warmup_ratio"),
    (["--model_name_or_path", "/nonexistent/bert"], "cannot load the model"),
    (["--train_file", "/nonexistent/train.csv"], "/nonexistent/train.csv does not exist"),
    (["--validation_file", "dev.csv"], "need --train_file"),
    (["--train_file", "t.csv", "--task_name", "sst2"], "replace --task_name and --data_dir"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number >= 0, got nan"),
    (["--weight_decay", "-0.1"], "--weight_decay must be a finite number >= 0, got -0.1"),
    (["--sparsity", "nan"], "--sparsity"),
])
def test_bad_inputs_give_one_line_and_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--output_dir", str(tmp_path / "out"), "--no_mlflow", *argv], prog="run_glue_pad.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("run_glue_pad.py: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "eval_results.json").exists()


@pytest.mark.slow
def test_cli_script_exits_2_on_a_bad_flag():
    """The script itself (``run_cli`` in ``__main__``); slow only for the Trainer import in a fresh process."""
    proc = subprocess.run([sys.executable, "padnet/moe/run_glue_pad.py", "--use_moe", "none", "--sparsity", "2",
                           "--output_dir", "/tmp/never"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("run_glue_pad.py: error:")


@pytest.mark.slow
def test_torchrun_two_processes(tiny_bert, tmp_path):
    """DDP on CPU (Gloo) through the HF Trainer; IMP in train mode (different noise per rank), masks broadcast."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "padnet/moe/run_glue_pad.py",
         "--model_name_or_path", tiny_bert, "--output_dir", str(out), "--use_moe", "PadMoE", "--n_experts", "4",
         "--max_train_samples", "32", "--max_eval_samples", "32", "--length", "1", "--max_steps", "2",
         "--prune_train_mode", "true", "--no_mlflow", *FAST],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "train_results.json").read_text())["dynamic_ratio"] == pytest.approx(0.5, abs=1e-3)
    assert "eval_accuracy" in json.loads((out / "eval_results.json").read_text())
