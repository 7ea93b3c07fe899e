"""Invalid flag values, for every flag of every subcommand: a usage error naming the flag, exit
status 2, no traceback. The flags are read from the parser itself, so a new flag is covered
as soon as it exists; the values come from hypothesis and from a fixed list of usual mistakes.
"""

import argparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reslab.cli
from reslab.cli import COMMANDS, build_parser, main

PARSER = build_parser()
SUBPARSERS: dict[str, argparse.ArgumentParser] = next(
    action.choices for action in PARSER._actions if isinstance(action, argparse._SubParsersAction))
USUAL_MISTAKES = ["", " ", "x", "-1", "0", "-0.5", "1.5", "2", "nan", "inf", "-inf", "1e999", "1e-400", "10**9",
                  "99999999999999999999999", "0x10", "none", "None", "true", "1,2", "1,,x", "0.9,0.5", "=1", "key=",
                  "café", "١٢", "\x00"]


def option_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)  # the long form


def constrained(action: argparse.Action) -> bool:
    """Whether some values of the option are invalid: it converts or restricts its value."""
    free_text = action.type is None or getattr(action.type, "__name__", "") == "str"  # str, or 'none' | str
    return bool(action.option_strings) and action.nargs != 0 and (action.choices is not None or not free_text)


def switches(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Options that take no value (store_true, --x/--no-x), other than --help."""
    return [a for a in parser._actions if a.option_strings and a.nargs == 0 and not isinstance(a, argparse._HelpAction)]


CONSTRAINED = {name: [a for a in sub._actions if constrained(a)] for name, sub in SUBPARSERS.items()}


def rejects(action: argparse.Action, text: str) -> bool:
    """Whether argparse refuses ``text`` for ``action``: its type raises (ArgumentTypeError,
    ValueError or TypeError, the ones argparse reports) or the value is not one of its choices.
    Any other exception escapes, failing the test: the command line would show a traceback."""
    try:
        value = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return True
    return action.choices is not None and value not in action.choices


def assert_usage_error(capsys, command: str, action: argparse.Action, text: str) -> None:
    """``reslab COMMAND --FLAG=TEXT`` stops with argparse's error naming the flag, status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main([command, f"{option_name(action)}={text}"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, (command, option_name(action), text, err)
    assert "Traceback" not in err
    named = "/".join(action.option_strings)  # how argparse names an option in its messages
    assert len(err.strip().splitlines()) == 1, err  # not argparse's whole usage first
    assert err.startswith(f"reslab {command}: error: argument {named}: "), err


@pytest.fixture(autouse=True)
def one_parser(monkeypatch):
    """main() builds its parser once here (building it each call would dominate the test's time)."""
    monkeypatch.setattr(reslab.cli, "build_parser", lambda: PARSER)


def test_every_command_is_enumerated_and_has_constrained_flags():
    assert set(SUBPARSERS) == set(COMMANDS)
    assert {"--lr", "--batch-size", "--epochs", "--schedule", "--milestones", "--seeds", "--model-arg"} <= {
        option_name(a) for a in CONSTRAINED["train"]}
    assert sum(map(len, CONSTRAINED.values())) > 100


@pytest.mark.parametrize("command", ["degradation", "sdepth"])
def test_shared_training_flags_accept_what_reslab_train_accepts(command):
    """The experiments' --lr, --epochs, ... take exactly the values `reslab train`'s flags take
    (--lr 0 included, which they once refused while `reslab train` allowed it)."""
    train = {option_name(a): a for a in CONSTRAINED["train"]}
    shared = [a for a in CONSTRAINED[command] if option_name(a) in train and option_name(a) not in ("--recipe", "--set")]
    assert {"--lr", "--epochs", "--iterations", "--batch-size", "--seed", "--threads"} <= {option_name(a) for a in shared}
    for action in shared:
        for text in [*USUAL_MISTAKES, "0.1", "3", "128"]:
            assert rejects(action, text) == rejects(train[option_name(action)], text), (command, option_name(action), text)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_usual_mistakes_are_usage_errors_for_every_flag(command, capsys):
    for action in CONSTRAINED[command]:
        bad = [text for text in USUAL_MISTAKES if rejects(action, text)]
        assert bad, f"{command} {option_name(action)} accepts every one of {USUAL_MISTAKES}"
        for text in bad:
            assert_usage_error(capsys, command, action, text)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_value_given_to_a_switch_is_a_usage_error(command, capsys):
    for action in switches(SUBPARSERS[command]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main([command, f"{option_name(action)}=1"])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and "ignored explicit argument '1'" in err and "Traceback" not in err


def takes_numbers(action: argparse.Action) -> bool:
    return action.choices is None and not (rejects(action, "1") and rejects(action, "0.5"))


def test_numeric_flags_reject_values_that_are_not_finite():
    numeric = [(command, action) for command, actions in CONSTRAINED.items()
               for action in actions if takes_numbers(action)]
    assert len(numeric) > 70
    for command, action in numeric:
        for text in ("nan", "inf", "-inf", "1e999"):
            assert rejects(action, text), f"{command} {option_name(action)} accepts {text}"
        in_range = getattr(action.type, "accepts", None)
        if in_range is not None:  # an integer too large for a float: the flag and the config agree
            assert in_range(10**400) == (not rejects(action, str(10**400))), f"{command} {option_name(action)}"


def numbers_as_text() -> st.SearchStrategy[str]:
    return st.one_of(st.integers().map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.integers(-3, 3).map(str), st.floats(-2, 2).map(lambda x: f"{x:.3g}"),
                     st.lists(st.integers(-5, 2**33), min_size=0, max_size=4).map(lambda xs: ",".join(map(str, xs))),
                     st.lists(st.floats(-1, 2), max_size=3).map(lambda xs: ",".join(map(repr, xs))))


def any_text() -> st.SearchStrategy[str]:
    # Not '--': Python 3.11's argparse drops a '--' value ('--flag=--' is the flag without a value).
    return st.one_of(numbers_as_text(), st.text(max_size=12), st.sampled_from(USUAL_MISTAKES),
                     st.builds(lambda k, v: f"{k}={v}", st.text(max_size=5), st.text(max_size=8))).filter(
                         lambda text: text != "--")


def as_number(text: str):
    """``text`` as Python reads an int, else a float; None if it is neither."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


@pytest.mark.parametrize("command", [name for name in COMMANDS if CONSTRAINED[name]])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_invalid_values_drawn_by_hypothesis_are_usage_errors(command, capsys, data):
    action = data.draw(st.sampled_from(CONSTRAINED[command]), label="flag")
    text = data.draw(any_text(), label="value")
    refused = rejects(action, text)
    in_range = getattr(action.type, "accepts", None)
    if in_range is not None:  # a bounded number: the flag takes exactly the numbers its range (the config's) takes
        number = as_number(text)
        assert refused == (number is None or not in_range(number)), (option_name(action), text)
    if refused:
        assert_usage_error(capsys, command, action, text)
