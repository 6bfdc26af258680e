"""The command line under hostile or careless use: repeated and out-of-range options, outputs that
must not clobber, missing extras, help texts, terminal widths, exit statuses."""

import re
import sys

import pytest


def test_a_repeated_option_is_an_error_not_the_last_value(cli):
    status, out, err = cli("compare", "llama-3.1-8b", "--seq", "4k", "--seq=8k")
    assert (status, out) == (2, "")
    assert err == ("kvcalc: error: Invalid value for '--seq': given twice ('4k', then '8k'): give it "
                   "once; a comma-separated list takes several\n")


def test_a_flag_may_repeat(cli):
    status, _, _ = cli("compare", "deepseek-v3", "--mtp", "--mtp", "--seq", "4k")
    assert status == 0


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (("compare", "llama-3.1-8b", "--batch", "abc"), "(got 'abc')"),
        (("compare", "llama-3.1-8b", "--batch", "0"), "Input should be greater than or equal to 1 (got '0')"),
        (("compare", "llama-3.1-8b", "--tp", "-1"), "(got '-1')"),
        (("compare", "llama-3.1-8b", "--batch", "99999999999"), "less than or equal to 16777216"),
        (("show", "llama-3.1-8b", "--seq", "1" + "0" * 30), "is not a token count"),
        (("show", "llama-3.1-8b", "--seq", "100G"), "is not a token count"),
        (("show", "llama-3.1-8b", "--seq", "99999999M"), "is more than 65536M tokens"),
        (("measure", "llama-3.1-8b", "--layers", "0"), "(got '0')"),
        (("fit", "llama-3.1-8b", "--gpu-mem", "0"), "--gpu-mem: '0': a GPU needs some memory"),
        (("import", "x.json", "--name", ""), "--name: '': use lowercase letters"),
    ],
)
def test_bad_option_values_are_one_line_naming_the_value(cli, args, shown):
    status, out, err = cli(*args)
    assert (status, out) == (2, "")
    assert err.startswith("kvcalc: error: ") and err.count("\n") == 1
    assert shown in err, err


def test_plot_refuses_a_batch_below_one(cli, tmp_path):
    for batch in ("0", "-1"):
        status, _, err = cli("plot", "llama-3.1-8b", "-o", str(tmp_path / "c.png"), "--batch", batch)
        assert status == 2 and f"(got '{batch}')" in err
    assert list(tmp_path.iterdir()) == []


def test_output_dash_is_stdout(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = cli("compare", "llama-3.1-8b", "--seq", "4k", "-f", "csv", "-o", "-")
    assert (status, err) == (0, "")
    assert out.startswith("model,display_name,")
    assert list(tmp_path.iterdir()) == []


def test_output_onto_its_own_input_is_refused(cli, spec_file):
    path = spec_file()
    before = path.read_text()
    status, _, err = cli("compare", str(path), "-o", str(path))
    assert status == 2
    assert err == f"kvcalc: error: --output: {path}: is an input of this command; refusing to overwrite it\n"
    assert path.read_text() == before


def test_output_onto_dev_null_keeps_the_device(cli):
    import os
    import stat

    status, _, _ = cli("compare", "llama-3.1-8b", "--seq", "4k", "-o", "/dev/null")
    assert status == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_measure_without_torch_says_what_to_install(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    status, out, err = cli("measure", "llama-3.1-8b", "--seq", "256")
    assert (status, out) == (2, "")
    assert err.startswith("kvcalc: error: kvcalc measure needs PyTorch (")
    assert "pip install 'kvcalc[measure]'" in err and err.count("\n") == 1


def test_fit_exits_1_when_the_weights_do_not_fit(cli):
    status, out, _ = cli("fit", "llama-3.1-405b", "--gpu-mem", "80GiB")
    assert status == 1
    assert "= KV budget per GPU" in out  # the breakdown is still shown


def test_fit_exits_0_when_something_fits(cli):
    status, _, _ = cli("fit", "llama-3.1-8b", "--gpu", "h200")
    assert status == 0


def test_compare_title_names_the_mla_layout_only_with_an_mla_model(cli):
    _, out, _ = cli("compare", "llama-3.1-8b", "--seq", "4k")
    assert out.splitlines()[0] == "KV cache, bf16, engine-neutral, batch 1"
    _, out, _ = cli("compare", "llama-3.1-8b", "deepseek-v3", "--seq", "4k")
    assert out.splitlines()[0] == "KV cache, bf16, engine-neutral, MLA latent layout, batch 1"


def test_csv_booleans_read_like_json(cli):
    status, out, _ = cli("fit", "llama-3.1-8b", "--gpu", "h200", "-f", "csv")
    assert status == 0
    header, row = out.splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert (values["weights_fit"], values["context_capped"]) == ("true", "true")


def test_tables_fit_the_terminal(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    status, out, _ = cli("compare", "deepseek-v3", "llama-3.1-70b", "--seq", "128k")
    assert status == 0
    assert max(map(len, out.splitlines())) <= 80
    assert "  DeepSeek-V3    MLA   latent    128k   70,272  8.58 GiB    610 GiB  71.1× less" in out


def test_help_shows_defaults_and_no_placeholder_for_flags(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    status, out, _ = cli("compare", "--help")
    assert status == 0
    assert "[default: latent]" in out and "[default: engine-neutral ideal]" in out
    assert "<bool>" not in out  # neither our flags nor typer's --help
    _, out, _ = cli("fit", "--help")
    assert "[default: per engine, see README]" in out


def test_shell_completion_is_offered(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = cli("--help")
    assert re.search(r"--install-completion", out) and "--show-completion" in out
    assert "<bool>" not in out
