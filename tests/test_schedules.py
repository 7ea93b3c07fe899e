"""Learning-rate schedules, the papers' recipes as data, and the training config (no training here)."""

import json

import pytest
import torch

from reslab import create_model
from reslab.train import RECIPES, LowLrStart, Schedule, TrainConfig
from reslab.models.depth import weighted_depth
from reslab.train.schedules import scale_lr

CIFAR_EPOCH = 391  # iterations per epoch of 50,000 images in batches of 128 (the last partial batch dropped: 390)


def test_paper_schedule_steps_at_32k_and_48k_and_stops_at_64k():
    schedule = TrainConfig.from_recipe("paper").build_schedule(CIFAR_EPOCH)
    assert schedule.total_iterations == 64000
    assert schedule.milestones == (32000, 48000)
    assert schedule.lr(0) == pytest.approx(0.1)
    assert schedule.lr(31999) == pytest.approx(0.1)
    assert schedule.lr(32000) == pytest.approx(0.01)
    assert schedule.lr(47999) == pytest.approx(0.01)
    assert schedule.lr(48000) == pytest.approx(0.001)
    assert schedule.lr(63999) == pytest.approx(0.001)
    assert schedule.momentum_at(12345) == 0.9


def test_wrn_schedule_multiplies_by_0_2_at_epochs_60_120_160_of_200():
    schedule = TrainConfig.from_recipe("wrn").build_schedule(CIFAR_EPOCH)
    assert schedule.total_iterations == 200 * CIFAR_EPOCH
    assert schedule.milestones == (60 * CIFAR_EPOCH, 120 * CIFAR_EPOCH, 160 * CIFAR_EPOCH)
    assert schedule.lr(60 * CIFAR_EPOCH - 1) == pytest.approx(0.1)
    assert schedule.lr(60 * CIFAR_EPOCH) == pytest.approx(0.02)
    assert schedule.lr(160 * CIFAR_EPOCH) == pytest.approx(0.1 * 0.2 ** 3)


@pytest.mark.parametrize("recipe, epochs, milestones", [("resnext", 300, (150, 225)), ("stochastic-depth", 500, (250, 375))])
def test_epoch_recipes_divide_by_ten_at_the_papers_epochs(recipe, epochs, milestones):
    schedule = TrainConfig.from_recipe(recipe).build_schedule(CIFAR_EPOCH)
    assert schedule.total_iterations == epochs * CIFAR_EPOCH
    assert schedule.milestones == tuple(m * CIFAR_EPOCH for m in milestones)
    assert schedule.lr(milestones[1] * CIFAR_EPOCH) == pytest.approx(0.001)


def test_linear_warmup_rises_from_the_start_factor_to_the_peak():
    schedule = Schedule(1.0, 100, "linear", warmup_iterations=10, warmup_start=0.1)
    assert schedule.lr(0) == pytest.approx(0.1)
    assert schedule.lr(5) == pytest.approx(0.55)
    assert schedule.lr(10) == pytest.approx(1.0)
    lrs = [schedule.lr(i) for i in range(100)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising during the warm-up
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # then falling every step


def test_linear_decays_to_the_final_factor_at_the_end():
    schedule = Schedule(0.4, 110, "linear", warmup_iterations=10, final_lr=0.0)
    assert schedule.lr(60) == pytest.approx(0.2)
    assert schedule.lr(110) == pytest.approx(0.0)
    assert schedule.lr(109) == pytest.approx(0.4 / 100)


def test_cosine_endpoints_and_midpoint():
    schedule = Schedule(0.2, 1000, "cosine", final_lr=0.05)
    assert schedule.lr(0) == pytest.approx(0.2)
    assert schedule.lr(500) == pytest.approx(0.2 * (1 + 0.05) / 2)
    assert schedule.lr(1000) == pytest.approx(0.2 * 0.05)


def test_one_cycle_peaks_at_the_end_of_warmup_with_momentum_the_other_way():
    schedule = Schedule(0.4, 100, "one-cycle", warmup_iterations=30, warmup_start=0.04, momentum=0.95, momentum_low=0.85)
    lrs = [schedule.lr(i) for i in range(101)]
    assert max(range(101), key=lrs.__getitem__) == 30
    assert lrs[0] == pytest.approx(0.016) and lrs[100] == pytest.approx(0.0)
    assert schedule.momentum_at(0) == pytest.approx(0.95)
    assert schedule.momentum_at(30) == pytest.approx(0.85)
    assert schedule.momentum_at(100) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="warm-up"):
        Schedule(0.4, 100, "one-cycle")


def test_fast_recipe_warms_up_then_decays_linearly_to_zero():
    config = TrainConfig.from_recipe("fast")
    schedule = config.build_schedule(97)
    assert schedule.total_iterations == 25 * 97
    assert schedule.warmup_iterations == round(0.15 * 25 * 97)
    assert schedule.lr(0) == pytest.approx(0.015)
    assert schedule.lr(schedule.warmup_iterations) == pytest.approx(0.15)
    assert schedule.lr(schedule.total_iterations) == pytest.approx(0.0)


def test_a_batch_size_other_than_the_recipes_scales_the_lr_linearly_and_says_so():
    lr, note = scale_lr(0.1, 512, 128)
    assert lr == pytest.approx(0.4)
    assert "0.1 x 512/128 = 0.4" in note
    assert scale_lr(0.1, 128, 128) == (0.1, None)
    schedule = TrainConfig.from_recipe("paper", batch_size=256).build_schedule(195)
    assert schedule.lr(0) == pytest.approx(0.2)


def test_low_lr_start_ends_when_the_running_error_falls_below_80_percent():
    start = LowLrStart(0.01, until_error=0.8, max_iterations=500, window=4)
    for it in range(10):  # 90% error: stays low
        assert not start.observe(it, wrong=115, seen=128)
    assert start.active
    ended = [start.observe(10 + i, wrong=90, seen=128) for i in range(4)]  # 70% error
    # the running error over the last 4 batches first drops below 0.8 at the third batch of 70%
    assert ended == [False, False, True, False]
    assert not start.active and start.ended_at == 13


def test_low_lr_start_is_capped_and_its_state_round_trips():
    start = LowLrStart(0.01, until_error=0.8, max_iterations=5)
    for it in range(3):
        start.observe(it, wrong=128, seen=128)
    copy = LowLrStart(0.01, until_error=0.8, max_iterations=5)
    copy.load_state_dict(json.loads(json.dumps(start.state_dict())))
    assert copy.running_error() == 1.0 and copy.active
    assert not copy.observe(3, 128, 128) and copy.observe(4, 128, 128)
    assert copy.ended_at == 5


def test_the_paper_recipe_starts_resnet110_at_0_01_but_not_resnet20():
    paper = TrainConfig.from_recipe("paper")
    assert paper.build_low_lr_start(weighted_depth(create_model("resnet20"))) is None
    start = paper.build_low_lr_start(weighted_depth(create_model("resnet110")))
    assert start.lr == pytest.approx(0.01) and start.until_error == 0.8 and start.max_iterations == 500
    assert TrainConfig.from_recipe("preact").build_low_lr_start(110) is None
    assert TrainConfig.from_recipe("preact").build_low_lr_start(1001).lr == pytest.approx(0.01)


@pytest.mark.parametrize("name, depth", [("resnet20", 20), ("resnet56", 56), ("resnet110", 110), ("resnet18", 18), ("resnet50", 50)])
def test_weighted_depth_counts_layers_as_the_papers(name, depth):
    with torch.device("meta"):
        model = create_model(name)
    assert weighted_depth(model) == depth


def test_recipes_hold_the_papers_values():
    paper = TrainConfig.from_recipe("paper")
    assert (paper.batch_size, paper.lr, paper.momentum, paper.weight_decay, paper.nesterov) == (128, 0.1, 0.9, 1e-4, False)
    assert paper.decay_norm_and_bias and paper.label_smoothing == 0 and not paper.tta_flip and paper.ema_decay == 0
    wrn = TrainConfig.from_recipe("wrn")
    assert (wrn.nesterov, wrn.weight_decay, wrn.gamma, wrn.padding_mode, wrn.dropout) == (True, 5e-4, 0.2, "reflect", 0.3)
    sd = TrainConfig.from_recipe("stochastic-depth")
    assert (sd.epochs, sd.stochastic_depth, sd.nesterov, sd.weight_decay) == (500, 0.5, True, 1e-4)
    assert TrainConfig.from_recipe("resnext").weight_decay == 5e-4
    fast = TrainConfig.from_recipe("fast")
    assert not fast.decay_norm_and_bias and fast.label_smoothing == 0.1 and fast.tta_flip and fast.nesterov
    assert fast.alternating_flip and fast.tta_translate == 1 and fast.compile and fast.moment_bn
    assert (fast.epochs, fast.small_crop, fast.small_crop_part, fast.small_crop_epochs(390)) == (25, 24, 0.52, 13)
    assert TrainConfig.from_recipe("fast", epochs=10).small_crop_epochs(390) == 5 and paper.small_crop_part == 0
    assert TrainConfig.from_recipe("fast", iterations=70).small_crop_epochs(390) == 0  # shorter than an epoch: full size
    assert not paper.alternating_flip and paper.tta_translate == 0 and not paper.compile and not paper.moment_bn
    assert set(RECIPES) == {"paper", "preact", "wrn", "resnext", "stochastic-depth", "fast", "zoo", "finetune", "imagenet"}


def test_epochs_override_replaces_the_recipes_iterations():
    config = TrainConfig.from_recipe("paper", epochs=10)
    assert config.iterations is None and config.epochs == 10
    assert config.build_schedule(100).milestones == (500, 750)  # the shape is kept
    assert TrainConfig.from_recipe("fast", iterations=300).epochs is None


def test_config_round_trips_through_json():
    config = TrainConfig.from_recipe("wrn", model="resnet20", data="d", out="o", model_args={"shortcut": "B"},
                                     milestones=(0.25, 0.5), seed=3)
    again = TrainConfig.from_dict(json.loads(config.to_json()))
    assert again == config and again.milestones == (0.25, 0.5)
    assert again.model_overrides() == {"shortcut": "B", "dropout": 0.3}


@pytest.mark.parametrize("overrides, message", [
    (dict(milestones=(0.75, 0.5)), "milestones"),
    (dict(milestones=(1.5,)), "milestones"),
    (dict(epochs=10, iterations=100), "not both"),
    (dict(schedule="exponential"), "schedule must be one of"),
    (dict(label_smoothing=1.5), "label_smoothing"),
    (dict(stochastic_depth=0.0), "survival"),
    (dict(batch_size=0), "batch_size"),
])
def test_config_rejects_values_that_make_no_sense(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_from_recipe_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown recipe 'papr'"):
        TrainConfig.from_recipe("papr")
    with pytest.raises(ValueError, match="no field learning_rate"):
        TrainConfig.from_recipe("fast", learning_rate=0.1)


def test_describe_shows_the_curves_key_points():
    text = TrainConfig.from_recipe("paper").build_schedule(CIFAR_EPOCH).describe()
    assert "it 32000: 0.01" in text and "it 48000: 0.001" in text
