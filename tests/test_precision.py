"""--precision auto: bf16 autocast where the hardware has bf16 instructions, fp32 where it would
be emulated; the evaluation commands take the flag (the trainer's use of it: test_train.py)."""

import pytest
import torch

from reslab import precision
from reslab.cli import build_parser
from reslab.precision import cpu_flags, resolve_precision

ICE_LAKE = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPU = torch.device("cpu")


def test_cpu_flags_are_read_from_the_flags_line():
    assert cpu_flags(ICE_LAKE) == {"fpu", "avx2", "avx512f", "avx512bw", "avx512_vnni"}
    assert {"avx512_bf16", "amx_bf16"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n") == frozenset()


def test_cpu_flags_are_empty_without_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    assert cpu_flags() == frozenset()


@pytest.mark.parametrize("cpuinfo, chosen, reason", [
    (SAPPHIRE_RAPIDS, "bf16", "precision: bf16 autocast (auto: the CPU has amx_bf16 and avx512_bf16)"),
    (ICE_LAKE, "fp32", "precision: fp32 (auto: the CPU has neither amx_bf16 nor avx512_bf16, so bf16 would be "
                       "emulated and slower)"),
])
def test_auto_picks_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, cpuinfo, chosen, reason):
    monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(cpuinfo))
    assert resolve_precision("auto", CPU) == (chosen, reason)


def test_an_asked_for_precision_is_kept_and_a_slow_bf16_is_named(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(ICE_LAKE))
    assert resolve_precision("fp32", CPU) == ("fp32", "precision: fp32 (asked for)")
    chosen, note = resolve_precision("bf16", CPU)
    assert chosen == "bf16" and note.startswith("precision: bf16 autocast (asked for; the CPU has neither")
    monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(SAPPHIRE_RAPIDS))
    assert resolve_precision("bf16", CPU) == ("bf16", "precision: bf16 autocast (asked for)")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, got 'fp16'"):
        resolve_precision("fp16", CPU)


def test_evaluation_commands_take_precision_and_keep_fp32_as_a_shorthand(capsys):
    parser = build_parser()
    for command in (["eval", "ckpt"], ["lesion", "ckpt"], ["responses", "a"]):
        base = [*command, "--data", "d"]
        assert parser.parse_args(base).precision == "auto"
        assert parser.parse_args([*base, "--precision", "bf16"]).precision == "bf16"
        assert parser.parse_args([*base, "--fp32"]).precision == "fp32"
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*base, "--precision", "fp16"])
        assert exc.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.mark.parametrize("capability, chosen", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp32")])
def test_auto_picks_bf16_on_gpus_from_ampere_on(monkeypatch, capability, chosen):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    picked, note = resolve_precision("auto", torch.device("cuda"))
    assert picked == chosen and f"compute capability {capability[0]}.{capability[1]}" in note
