import pytest
from click.testing import CliRunner

from run_pipeline import cli


def test_synth_and_check_networks(tmp_path, reference):
    runner = CliRunner()
    res = runner.invoke(cli, ["synth", "--out", str(tmp_path / "d"), "--identities", "2",
                              "--poses-per-identity", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "4 images" in res.output and (tmp_path / "d" / "train_img_list.csv").exists()
    res = runner.invoke(cli, ["check-networks", "--reference", str(reference)])
    assert res.exit_code == 0, res.output
    assert res.output.count("ok") == 2 and "277 keys" in res.output


def test_config_errors_name_the_field_and_write_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  identities: many\n")
    res = CliRunner().invoke(cli, ["--config", str(bad), "synth", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "synth.identities" in res.output and "'many'" in res.output
    res = CliRunner().invoke(cli, ["--set", "synth.colour=red", "synth", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "synth.colour" in res.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command):
    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output and len(res.output) > 200
