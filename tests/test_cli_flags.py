"""Stage flags go through the config's validation (issue 20): a bad value exits with code 2
and one paragraph naming the field and the flag, before any work; flags without a config
field are checked by their click type."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import PipelineContext, cli
from pipeline.core.errors import ConfigError

CONFIG_FIELDS = [
    (["generate", "--batch-size", "0"], "generate.batch_size", "--batch-size 0"),
    (["generate", "--batch-size", "-3"], "generate.batch_size", "--batch-size -3"),
    (["generate", "--ngf", "0"], "generate.ngf", "--ngf 0"),
    (["train", "--iterations", "0"], "train.iterations", "--iterations 0"),
    (["train", "--ckpt-every", "-1"], "train.ckpt_every", "--ckpt-every -1"),
    (["train", "--num-workers", "0"], "train.num_workers", "--num-workers 0"),
    (["train", "--ngf", "0"], "train.ngf", "--ngf 0"),
]

OTHER_FLAGS = [
    (["generate", "--limit", "-1"], "--limit"),
    (["generate", "--limit", "0"], "--limit"),
    (["train", "--init-from", "{tmp}", "--init-iter", "-1"], "--init-iter"),
    (["pairs", "--min-valid", "-1"], "--min-valid"),
    (["pairs", "--max-pairs-per-identity", "0"], "--max-pairs-per-identity"),
    (["posemaps", "--gaussian", "0"], "--gaussian"),
    (["evaluate", "--metrics", "ssim,bogus"], "bogus"),
    (["keypoints", "--estimator", "pifpaf"], "--estimator"),
]


def invoke(tmp_path, args: list[str]):
    where = ["--set", f"dataset.root={tmp_path}", "--set", f"output.root={tmp_path / 'out'}"]
    return CliRunner().invoke(cli, [*(a.format(tmp=tmp_path) for a in args), *where])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


@pytest.mark.parametrize(("args", "field", "flag"), CONFIG_FIELDS, ids=lambda v: str(v))
def test_flags_of_config_fields_are_validated_by_the_config(tmp_path, args, field, flag):
    res = invoke(tmp_path, args)
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    # One paragraph, the only output: nothing ran.
    assert res.output.strip().splitlines() == error_lines(res.output)
    (line,) = error_lines(res.output)
    assert f"'{field}'" in line and flag in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "name"), OTHER_FLAGS, ids=lambda v: str(v))
def test_other_flags_are_validated_by_their_type(tmp_path, args, name):
    res = invoke(tmp_path, args)
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    (line,) = error_lines(res.output)
    assert name in line, line
    assert not (tmp_path / "out").exists()


def test_flags_override_set_and_set_errors_stay_theirs():
    ctx = PipelineContext()
    ctx.override("generate.batch_size=4", "generate.ngf=8")
    cfg = ctx.override_flags(
        {"--batch-size": ("generate.batch_size", 2), "--executor": ("generate.executor", None)}
    )
    assert (cfg.generate.batch_size, cfg.generate.ngf, cfg.generate.executor) == (2, 8, "auto")
    paths = ctx.override_flags({"--pairs": ("generate.pairs", "null")})
    assert paths.generate.pairs == "null"  # a flag's string is never read as YAML
    bad = PipelineContext()
    bad.override("generate.ngf=0")
    with pytest.raises(ConfigError, match=r"'generate.ngf'") as raised:
        bad.override_flags({"--batch-size": ("generate.batch_size", 2)})
    assert "--batch-size" not in str(raised.value)
