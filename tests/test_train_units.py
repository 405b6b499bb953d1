"""The trainer's parts in one process: LR schedules, Grokfast, checkpoint checksums and
fallback, the DeepSpeed config, labels under document masking, segment planning."""
import json
import math

import pytest
import torch

from training.checkpoint import CheckpointManager, step_name, verify, write_checksums
from training.config import TrainConfig
from training.engine import deepspeed_config
from training.grokfast import GrokfastAdamW
from training.schedules import lr_multiplier
from training.trainer import model_inputs, plan_segments


def test_schedules():
    cos = lr_multiplier("cosine", 100, warmup_steps=10, min_ratio=0.1)
    assert [round(cos(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert cos(10) == pytest.approx(1.0) and cos(99) == pytest.approx(0.1)
    assert cos(55) == pytest.approx(0.55, abs=0.02)
    wsd = lr_multiplier("wsd", 100, warmup_steps=10, min_ratio=0.0, decay_fraction=0.2)
    assert all(wsd(s) == 1.0 for s in range(10, 82)) and wsd(99) == pytest.approx(0.0)
    assert wsd(90) == pytest.approx(0.5, abs=0.06)
    sqrt = lr_multiplier("wsd", 100, decay_fraction=0.5, decay_shape="sqrt")
    assert sqrt(62) < lr_multiplier("wsd", 100, decay_fraction=0.5)(62)  # 1 - sqrt falls faster early
    big = lr_multiplier("bignas", 100, warmup_steps=5, min_ratio=0.05)
    values = [big(s) for s in range(5, 100)]
    assert values[0] == 1.0 and all(a > b for a, b in zip(values, values[1:])) and values[-1] == pytest.approx(0.05)
    capped = lr_multiplier("bignas", 100, min_ratio=0.05, gamma=0.9)
    assert capped(40) == 0.05 and capped(99) == 0.05  # the constant end
    lin = lr_multiplier("linear", 50, min_ratio=0.0)
    assert lin(0) == 1.0 and lin(49) == 0.0 and lin(25) == pytest.approx(1 - 25 / 49)
    with pytest.raises(ValueError, match="unknown LR schedule"):
        lr_multiplier("step", 10)


def test_grokfast_adds_the_gradient_ema():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    q = torch.nn.Parameter(p.detach().clone())
    grok = GrokfastAdamW([p], lr=0.1, grokfast_alpha=0.9, grokfast_lamb=2.0, weight_decay=0.0)
    plain = torch.optim.AdamW([q], lr=0.1, weight_decay=0.0)
    ema = None
    for step in range(4):
        g = torch.randn(5)
        ema = g.clone() if ema is None else 0.9 * ema + 0.1 * g
        p.grad, q.grad = g.clone(), g + 2.0 * ema  # what Grokfast hands AdamW
        grok.step()
        plain.step()
        assert torch.allclose(p, q, atol=1e-6), step
    state = grok.state_dict()["state"][0]
    assert {"exp_avg", "exp_avg_sq", "step", "grokfast_ema"} <= set(state)
    assert torch.allclose(state["grokfast_ema"], ema)


def fake_checkpoint(root, step, payload=b"weights"):
    folder = root / step_name(step)
    (folder / "rng").mkdir(parents=True)
    (folder / "model.pt").write_bytes(payload)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    write_checksums(folder)
    (root / "latest").write_text(folder.name)
    return folder


def test_corrupted_or_partial_latest_falls_back(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    older = fake_checkpoint(root, 4)
    newest = fake_checkpoint(root, 8)
    manager = CheckpointManager(root)
    assert manager.find_resumable() == newest and verify(newest) is None
    (newest / "model.pt").write_bytes(b"weightz")  # same size, other bytes
    assert "does not match its checksum" in verify(newest)
    assert verify(newest, full=False) is None  # a size-only check would not see it
    with caplog.at_level("WARNING"):
        assert manager.find_resumable() == older
    assert "step_00000008 is unusable" in caplog.text and "instead of the latest step_00000008" in caplog.text
    (newest / "checksums.json").unlink()  # a save that never finished
    assert "did not finish" in verify(newest)
    (older / "model.pt").unlink()
    assert manager.find_resumable() is None


def test_deepspeed_config_from_yaml_keys(tmp_path):
    base = dict(shards="s", plan="p", model="tiny", segments=[{"tokens": 10}])
    cfg = TrainConfig(**base, micro_batch_size=4, grad_accum=3, gradient_clipping=0.5,
                      zero={"stage": 3, "offload_optimizer": True, "offload_params": True},
                      deepspeed={"zero_optimization": {"overlap_comm": True}})
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is torch.cuda.is_available()
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["overlap_comm"] is True  # merged, not replaced
    assert "reduce_bucket_size" not in z
    sized = deepspeed_config(cfg, num_params=20_000_000)["zero_optimization"]
    assert sized["reduce_bucket_size"] == sized["stage3_prefetch_bucket_size"] == 4_980_736  # 5M, 2**16-aligned
    with pytest.raises(ValueError, match="offload_params needs zero.stage 3"):
        TrainConfig(**base, zero={"stage": 2, "offload_params": True})
    with pytest.raises(ValueError, match="schedule.kind 'step'"):
        TrainConfig(**base, schedule={"kind": "step"})


def test_labels_under_document_masking():
    ids = torch.tensor([[5, 6, 3, 7, 8, 3, 0, 0]])
    batch = {"input_ids": ids, "document_ids": torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2]]),
             "attention_mask": torch.tensor([[True] * 6 + [False] * 2])}
    inputs = model_inputs(batch, 8, True, torch.device("cpu"))
    # padding and each document's first token (unpredictable across the mask) are ignored
    assert inputs["labels"].tolist() == [[5, 6, 3, -100, 8, 3, -100, -100]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1]]
    assert inputs["seq_idx"].tolist() == batch["document_ids"].tolist()
    plain = model_inputs(batch, 8, False, torch.device("cpu"))
    assert plain["labels"].tolist() == [[5, 6, 3, 7, 8, 3, -100, -100]] and "seq_idx" not in plain
    halves = model_inputs(batch, 4, True, torch.device("cpu"))
    assert halves["input_ids"].shape == (2, 4) and halves["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]


def test_segment_plan_and_errors():
    cfg = TrainConfig(shards="s", plan="p", model="tiny", segments=[
        {"seq_len": 256, "tokens": 10_000, "rope_theta": 20_000}, {"tokens": 5_000}])
    plans = plan_segments(cfg, shard_len=512, tokens_per_step_per_len=4, base_rope=10_000.0)
    assert [(p.seq_len, p.steps, p.first_step, p.rope_theta) for p in plans] == [
        (256, math.ceil(10_000 / 2048), 0, 20_000), (512, math.ceil(5_000 / 2048), 5, 20_000)]
    bad = TrainConfig(shards="s", plan="p", model="tiny", segments=[{"seq_len": 300, "tokens": 10}])
    with pytest.raises(ValueError, match="segments\\[0\\].seq_len 300 must divide the shards' sequence length 512"):
        plan_segments(bad, 512, 4, 10_000.0)
