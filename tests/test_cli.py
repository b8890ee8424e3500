import pytest
from click.testing import CliRunner

from cli.main import LAZY_COMMANDS, cli


def test_synth_and_check_networks(tmp_path, reference):
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "synth",
            "--out",
            str(tmp_path / "d"),
            "--identities",
            "2",
            "--poses-per-identity",
            "2",
            "--seed",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 images" in res.output and (tmp_path / "d" / "train_img_list.csv").exists()
    res = runner.invoke(cli, ["check-networks", "--reference", str(reference)])
    assert res.exit_code == 0, res.output
    assert res.output.count("ok") == 2 and "277 keys" in res.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_errors_name_the_field_and_write_nothing(tmp_path, where):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  identities: many\n")
    synth = ["synth", "--out", str(tmp_path / "d")]
    args = ["--config", str(bad), *synth] if where == "before" else [*synth, "--config", str(bad)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "synth.identities" in res.output and "'many'" in res.output
    assert "Traceback" not in res.output
    args = (
        ["--set", "synth.colour=red", *synth]
        if where == "before"
        else [*synth, "--set", "synth.colour=red"]
    )
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "synth.colour" in res.output
    assert not (tmp_path / "d").exists()


def test_options_after_the_subcommand_apply(tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "synth",
            "--out",
            str(tmp_path / "d"),
            "--set",
            "synth.identities=3",
            "--set",
            "synth.poses_per_identity=2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "6 images" in res.output and "in 3 identities" in res.output


def test_data_errors_are_one_paragraph_and_exit_2_with_traceback_only_when_verbose(tmp_path):
    args = ["pairs", "--set", f"dataset.root={tmp_path}"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "no keypoints table" in res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    res = CliRunner().invoke(cli, [*args, "--verbose"])
    assert res.exit_code != 0 and "no keypoints table" in str(res.exception)


def test_choice_options_refuse_unknown_names():
    res = CliRunner().invoke(cli, ["run", "--only", "keypoint"])
    assert res.exit_code == 2 and "'keypoint' is not one of" in res.output
    res = CliRunner().invoke(cli, ["evaluate", "--metrics", "ssim,psrn"])
    assert res.exit_code == 2 and "psrn" in res.output


def _all_commands():
    out = []
    for name in cli.list_commands(None):
        cmd = cli.get_command(None, name)
        out.append([name])
        for sub in getattr(cmd, "commands", {}):
            out.append([name, sub])
    return out


@pytest.mark.parametrize("command", _all_commands(), ids=" ".join)
def test_every_command_has_help(command):
    res = CliRunner().invoke(cli, [*command, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output and len(res.output) > 200, res.output
    assert "--config" in res.output and "--set" in res.output


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_top_level_help_lines_match_the_commands(name):
    assert cli.get_command(None, name).help.strip().splitlines()[0] == LAZY_COMMANDS[name][1]


def test_top_level_help_imports_no_stage():
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        "CliRunner().invoke(cli, ['--help']); "
        "print(sorted(m for m in sys.modules if m.startswith('stages.') or m in ('torch', 'ray')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
