"""Dual Path Networks, merge-and-run / deeply-fused nets and FractalNet: the invariants of each
family (path widths, the merge, independent streams, the fractal rule, drop-path)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab import count_parameters, create_model, residual_blocks
from reslab.models.dpn import DPN, DualPathBlock
from reslab.models.fractalnet import FractalConv, FractalNet, FractalPath, join
from reslab.models.layers import set_stochastic_depth
from reslab.models.merge_run import DeepFusionBlock, DMRNet, MergeAndRunBlock, MergeStreams
from reslab.models.resnet import cifar_resnet


def frozen(module: nn.Module) -> nn.Module:
    """Eval mode with random BN statistics, so that every layer does something."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module.eval()


# ----------------------------------------------------------------------------- DPN

def test_dual_path_block_adds_residual_part_and_appends_dense_part():
    torch.manual_seed(0)
    block = frozen(DualPathBlock(64 + 24, residual_channels=64, dense_increment=8, bottleneck_width=32, groups=4))
    x = torch.randn(2, 88, 8, 8)
    with torch.no_grad():
        y, branch = block(x), block.residual(x)
    assert branch.shape[1] == 64 + 8 and y.shape == (2, 64 + 24 + 8, 8, 8)
    assert torch.allclose(y[:, :64], x[:, :64] + branch[:, :64])  # residual path: constant width, summed
    assert torch.equal(y[:, 64:88], x[:, 64:])  # dense path: kept ...
    assert torch.equal(y[:, 88:], branch[:, 64:])  # ... and grown by k


def test_dpn_residual_width_is_constant_and_dense_width_grows_by_k_per_block():
    with torch.device("meta"):  # shapes only
        model = create_model("dpn26").eval()
    widths = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            block.register_forward_hook(lambda m, i, o: widths.append((m.residual_channels, m.dense_increment, o.shape[1])))
    model(torch.empty(1, 3, 32, 32, device="meta"))
    # dpn26: 2 blocks per stage; a stage's projection starts the dense path with 2k channels.
    assert widths == [(256, 16, 256 + 3 * 16), (256, 16, 256 + 4 * 16), (512, 32, 512 + 3 * 32), (512, 32, 512 + 4 * 32),
                      (1024, 24, 1024 + 3 * 24), (1024, 24, 1024 + 4 * 24), (2048, 128, 2048 + 3 * 128), (2048, 128, 2048 + 4 * 128)]
    assert model.num_features == model.fc.in_features == 2048 + 4 * 128


def test_dpn_projection_is_the_downsample_of_each_stage_first_block():
    with torch.device("meta"):
        model = create_model("dpn92")
    for i, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        first, rest = stage[0], list(stage)[1:]
        assert first.downsample.conv.stride == ((1, 1) if i == 0 else (2, 2))
        assert first.downsample.conv.out_channels == first.residual_channels + 2 * first.dense_increment
        assert all(b.downsample is None for b in rest)
        assert first.conv2.conv.groups == 32 and first.conv2.conv.in_channels == 96 * 2**i  # k_r doubles per stage


def test_dpn_deleted_branch_keeps_residual_path_and_appends_zero_channels():
    torch.manual_seed(0)
    block = frozen(DualPathBlock(40, residual_channels=32, dense_increment=8, bottleneck_width=16, groups=2))
    x = torch.randn(2, 40, 8, 8)
    with torch.no_grad():
        full = block(x)
        block.branch_enabled = False
        lesioned = block(x)
    assert lesioned.shape == full.shape
    assert torch.equal(lesioned[:, :40], x) and torch.all(lesioned[:, 40:] == 0)
    # A whole network with every branch deleted still runs: all shapes stay valid.
    with torch.device("meta"):
        model = create_model("dpn26").eval()
    for _, b in residual_blocks(model):
        b.branch_enabled = False
    assert model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 10)


def test_dpn_trains_with_stochastic_depth_and_dropped_blocks():
    with torch.device("meta"):
        blocks = residual_blocks(create_model("dpn26", stochastic_depth=0.2))
    assert len(blocks) == 8 and blocks[-1][1].drop_path.survival == pytest.approx(0.2)
    torch.manual_seed(0)
    model = tiny_dpn()
    set_stochastic_depth(model, 0.2)  # p_L = 0.2: most late blocks dropped
    for _ in range(4):
        model(torch.randn(2, 3, 16, 16)).logsumexp(1).mean().backward()
    assert torch.isfinite(model.conv1.weight.grad).all()


# ----------------------------------------------------------------------------- merge-and-run

def test_merge_shortcut_averages_the_two_halves_exactly():
    x = torch.randn(3, 16, 5, 5)
    first, second = x[:, :8], x[:, 8:]
    merged = MergeStreams()(x)
    assert torch.equal(merged[:, :8], (first + second) / 2) and torch.equal(merged[:, 8:], (first + second) / 2)
    assert torch.equal(MergeStreams(1, 2)(first), torch.cat([first, first], 1))  # one stream: its own average
    assert torch.equal(MergeStreams(2, 1)(x), (first + second) / 2)
    assert list(MergeStreams().parameters()) == []


def test_merge_and_run_branches_keep_the_two_streams_independent():
    torch.manual_seed(0)
    block = MergeAndRunBlock(8, 8).train()  # training mode: BN batch statistics are per channel too
    for stream in (0, 1):
        x = torch.randn(4, 16, 6, 6, requires_grad=True)
        out = block.residual(x)[:, 8 * stream:8 * (stream + 1)]
        out.square().sum().backward()
        other = slice(8, 16) if stream == 0 else slice(0, 8)
        own = slice(0, 8) if stream == 0 else slice(8, 16)
        assert torch.all(x.grad[:, other] == 0), "a branch must not see the other stream"
        assert x.grad[:, own].abs().sum() > 0


def test_merge_and_run_unit_is_the_papers_mapping():
    """y_i = ReLU(F_i(x_i) + (x_1 + x_2) / 2), and with the branch deleted ReLU of the merge."""
    torch.manual_seed(0)
    block = frozen(MergeAndRunBlock(8, 8))
    x = torch.randn(2, 16, 6, 6)
    average = (x[:, :8] + x[:, 8:]) / 2
    with torch.no_grad():
        y, branch = block(x), block.residual(x)
        assert torch.allclose(y, F.relu(branch + torch.cat([average, average], 1)))
        block.branch_enabled = False
        assert torch.equal(block(x), F.relu(torch.cat([average, average], 1)))


def test_dmrnet_streams_start_from_the_stem_and_join_at_the_end():
    with torch.device("meta"):
        model = create_model("dfn_mr1")  # alias of dmrnet56
    units = [b for _, b in residual_blocks(model)]
    assert len(units) == 27 and all(isinstance(u, MergeAndRunBlock) for u in units)
    assert units[0].downsample.in_streams == 1 and units[0].conv1.groups == 1  # both branches read the stem
    assert units[-1].out_streams == 1 and model.fc.in_features == 64
    projections = [u for u in units if isinstance(u.downsample, nn.Sequential)]
    assert len(projections) == 2 and all(p.downsample[0].groups == 2 for p in projections)
    # Depth along one stream: stem + 2 convs per unit + fc = 6n + 2.
    assert 1 + 2 * len(units) + 1 == 56
    assert model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 10)


def test_dmrnet_rejects_depths_other_than_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        create_model("dmrnet56", depth=55)


def test_deeply_fused_net_fuses_a_deep_and_a_shallow_network():
    with torch.device("meta"):
        model = create_model("dfn56")
    blocks = [b for _, b in residual_blocks(model)]
    assert len(blocks) == 27 and all(isinstance(b, DeepFusionBlock) for b in blocks)
    shallow = [b.downsample for b in blocks]
    assert all(isinstance(s[0], nn.Conv2d) and s[0].kernel_size == (3, 3) for s in shallow)
    assert [s[0].stride for s in shallow].count((2, 2)) == 2
    # Deep base network: stem + 2 x 27 + fc = 56 layers; shallow one: stem + 27 + fc = 29.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 27 + 27
    torch.manual_seed(0)
    block = frozen(DeepFusionBlock(16, 16))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), F.relu(block.downsample(x) + block.residual(x)))


# ----------------------------------------------------------------------------- FractalNet

def test_join_is_the_element_wise_mean():
    paths = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    assert torch.allclose(join(paths), (paths[0] + paths[1] + paths[2]) / 3)
    assert torch.allclose(join(paths, drop_probability=0.5, training=False), join(paths))  # no drop in eval
    assert torch.equal(join(paths[:1], drop_probability=1.0, training=True), paths[0])


def test_local_drop_path_keeps_at_least_one_input_per_join():
    torch.manual_seed(0)
    values = (1.0, 10.0, 100.0)
    paths = [torch.full((1,), v) for v in values]
    subset_means = {sum(s) / len(s) for s in ([1.0], [10.0], [100.0], [1.0, 10.0], [1.0, 100.0], [10.0, 100.0], [1.0, 10.0, 100.0])}
    outcomes = [join(paths, drop_probability=0.6, training=True).item() for _ in range(400)]
    assert all(any(abs(o - m) < 1e-4 for m in subset_means) for o in outcomes)  # never an empty join
    assert {round(o, 3) for o in outcomes if o in values} == set(values)  # single survivors do occur
    # Dropping every input still leaves exactly one.
    assert all(join(paths, drop_probability=1.0, training=True).item() in values for _ in range(50))


@pytest.mark.parametrize("columns", [1, 2, 3, 4])
def test_fractal_block_columns_and_longest_path(columns):
    with torch.device("meta"):
        block = FractalPath(columns, 8, 8)
    units = [m for m in block.modules() if isinstance(m, FractalConv)]
    assert len(units) == 2**columns - 1
    for c in range(columns):  # column c has 2**c convolutions
        assert sum(u.column == c for u in units) == 2**c
    assert FractalNet(columns, blocks=2, channels=[8, 8]).depth == 2 * 2 ** (columns - 1)


def test_registered_fractalnets_have_the_papers_depth_and_exact_parameter_count():
    with torch.device("meta"):
        net20, net40 = create_model("fractalnet20"), create_model("fractalnet40")
    assert (net20.num_columns, len(net20.blocks), net20.depth) == (3, 5, 20)
    assert (net40.num_columns, len(net40.blocks), net40.depth) == (4, 5, 40)

    def expected(columns):  # each column's first conv reads the block input; the other convs read c channels
        total, c_in = 0, 3
        for c in (64, 128, 256, 512, 512):
            n = 2**columns - 1
            total += columns * 9 * c_in * c + (n - columns) * 9 * c * c + n * 2 * c  # convs and BN
            c_in = c
        return total + 512 * 10 + 10

    assert count_parameters(net20) == expected(3) == 33_724_618  # the paper's 38.6M counts all convs as c -> c
    assert count_parameters(net40) == expected(4)


def test_single_column_equals_a_hand_built_chain_of_its_layers():
    torch.manual_seed(0)
    model = frozen(create_model("fractalnet20", channels=[8, 16, 16, 32, 32], dropout=(0.0, 0.1, 0.2, 0.3, 0.4)))
    chains = {0: ["conv"], 1: ["first.conv", "second.conv"],
              2: ["first.first.conv", "first.second.conv", "second.first.conv", "second.second.conv"]}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for column, names in chains.items():
            h = x
            for block in model.blocks:
                for name in names:
                    h = block.get_submodule(name)(h)
                h = F.max_pool2d(h, 2)
            by_hand = model.fc(h.flatten(1))
            model.eval_column = column
            assert torch.allclose(model(x), by_hand, atol=1e-5), column
        model.eval_column = None
        assert not torch.allclose(model(x), by_hand, atol=1e-3)  # the whole fractal differs from one column


def test_global_drop_path_runs_exactly_one_column_and_local_runs_all():
    torch.manual_seed(0)
    model = create_model("fractalnet20", columns=3, blocks=2, channels=[8, 8], local_drop_path=0.0, global_drop_path=1.0).train()
    ran = []
    for unit in model.modules():
        if isinstance(unit, FractalConv):
            unit.register_forward_hook(lambda m, i, o: ran.append(m.column))
    seen = set()
    for _ in range(24):
        ran.clear()
        model(torch.randn(2, 3, 8, 8))
        column = model.global_column
        seen.add(column)
        assert set(ran) == {column} and len(ran) == 2 * 2**column  # 2 blocks of 2**column convs
    assert seen == {0, 1, 2}
    model.set_drop_path(local=0.0, global_fraction=0.0)
    ran.clear()
    model(torch.randn(2, 3, 8, 8))
    assert model.global_column == -1 and len(ran) == 2 * 7


def test_drop_path_fraction_and_eval_determinism():
    torch.manual_seed(0)
    model = create_model("fractalnet20", columns=2, blocks=2, channels=[8, 8])
    model.set_drop_path(local=0.15, global_fraction=0.5)
    assert model.global_drop_path == 0.5
    assert all(m.local_drop_path == 0.15 for m in model.modules() if isinstance(m, FractalPath))
    model.train()
    draws = [model._active_column() for _ in range(1000)]  # the per-mini-batch draw of forward_features
    assert 440 <= sum(c >= 0 for c in draws) <= 560  # half the mini-batches are global; binomial std 16
    assert {c for c in draws if c >= 0} == {0, 1}
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))  # no drop-path, dropout or batch statistics in eval mode
    with pytest.raises(ValueError, match="drop-path probabilities"):
        model.set_drop_path(local=1.5)


def test_eval_column_out_of_range_is_a_clear_error():
    model = create_model("fractalnet20", columns=2, blocks=1, channels=[8]).eval()
    model.eval_column = 2
    with pytest.raises(ValueError, match="eval_column must be None or a column in \\[0, 1\\]"):
        model(torch.randn(1, 3, 32, 32))


def test_fractalnet_is_not_residual_and_refuses_stochastic_depth():
    model = create_model("fractalnet20", columns=2, blocks=2, channels=[8, 8])
    assert residual_blocks(model) == []
    with pytest.raises(ValueError, match="has no residual blocks"):
        create_model("fractalnet20", stochastic_depth=0.5)


def test_fractalnet_options_are_checked():
    with pytest.raises(ValueError, match="one channel count and one dropout rate per block"):
        FractalNet(3, blocks=5, dropout=[0.1, 0.2])
    with pytest.raises(ValueError, match="dropout rates must be in"):
        FractalNet(2, blocks=1, channels=[8], dropout=1.0)
    dropouts = [m.dropout.p for m in FractalNet(2, blocks=2, channels=[8, 8], dropout=[0.0, 0.3]).modules()
                if isinstance(m, FractalConv) and isinstance(m.dropout, nn.Dropout)]
    assert dropouts == [0.3] * 3  # block 1 has no dropout, block 2's three convs have 0.3


# ----------------------------------------------------------------------------- all three

def tiny_dpn() -> DPN:
    """The DPN layout (4 stages, projections, grouped 3x3) at widths that train in milliseconds."""
    return DPN((1, 2, 1, 1), (4, 4, 4, 8), bottleneck_width=8, groups=2, residual_widths=(16, 16, 32, 32),
               stem="cifar", stem_width=8, num_classes=10)


@pytest.mark.parametrize("build", [tiny_dpn, lambda: DMRNet(depth=8, widen_factor=1), lambda: cifar_resnet(8, DeepFusionBlock),
                                   lambda: FractalNet(2, blocks=3, channels=[8, 8, 16], local_drop_path=0.15, global_drop_path=0.5)],
                         ids=["dpn", "dmrnet", "dfn", "fractalnet"])
def test_scripts_and_runs_channels_last_in_bf16(build):
    torch.manual_seed(0)
    model = build()
    set_stochastic_depth(model, 0.5 if residual_blocks(model) else None)
    model.eval()  # stochastic depth in eval mode: deterministic, branches scaled by p_l
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)
    model = model.train().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.to(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
