"""`pelk report`: one self-contained HTML page with the stage table, kernel pictures and optional ERF."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from archspec import save_spec
from cli import main
from compiler import compile_spec, write_build
from compiler.report import STAGE_HEADERS, report_html
from tests.conftest import tiny_spec


class PageParser(HTMLParser):
    """Collects tables (rows of cell texts), image sources, every URL-bearing attribute and headings."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.links: list[tuple[str, str, str]] = []
        self.headings: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attributes = dict(attrs)
        for name in ("src", "href", "data", "action"):
            if name in attributes:
                self.links.append((tag, name, attributes[name]))
        if tag == "img":
            self.images.append(attributes["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data):
        for collector in (self._cell, self._heading):
            if collector is not None:
                collector.append(data)


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def test_the_page_holds_totals_stage_rows_and_one_kernel_picture_per_stage():
    compiled = compile_spec("pelk_t")
    page = parse(report_html(compiled, "pelk_t"))
    assert page.headings == ["pelk_t", "Totals", "Stages", "Kernels", "Spec"]
    stage_table = next(table for table in page.tables if table[0] == STAGE_HEADERS)
    kernels = [row[3] for row in stage_table[1:]]
    assert kernels == ["51x51", "49x49", "47x47", "13x13"]
    assert stage_table[1][4] == "[9, 8, 4, 2, 1, 1, 1]"  # the paper's K=51 grid with a 5x5 centre
    assert [row[10] for row in stage_table[1:]] == [f"{stage['params_dense']:,}" for stage in compiled.stages]
    totals = dict((row[0], row[1]) for row in page.tables[0][1:])
    assert any(value.startswith(f"{compiled.totals['params']['nonzero']:,}") for value in totals.values())
    assert len(page.images) == 4
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")


def test_nothing_is_fetched_from_elsewhere():
    page = parse(report_html(compile_spec("slak_t"), "slak_t"))
    assert all(value.startswith("data:image/png;base64,") for _, _, value in page.links)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags


def test_text_from_the_spec_is_escaped():
    spec = tiny_spec("convnext_t").model_copy(update={"description": '<script>alert("x")</script> & <b>'})
    text = report_html(compile_spec(spec), 'spec "<odd>".yaml')
    assert "<script>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in text
    assert "script" not in parse(text).tags


def test_cli_writes_a_report_with_the_erf_of_a_build_directory(tmp_path):
    build = write_build(compile_spec(tiny_spec("pelk_t", dim=8)), tmp_path / "run")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(build), "--out", str(out), "--erf", "--num-images", "2",
                                       "--size", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    page = parse(out.read_text(encoding="utf-8"))
    assert "Effective receptive field" in page.headings
    assert len(page.images) == 4 + 1
    ratio_table = next(table for table in page.tables if table[0] == ["threshold t", "square", "area ratio"])
    assert [row[0] for row in ratio_table[1:]] == ["20%", "30%", "50%", "99%"]
    assert "ERF over 2 image(s) at 64x64" in result.output


def test_cli_report_of_a_spec_file_at_another_resolution(tmp_path):
    spec_path = tmp_path / "tiny.yaml"
    save_spec(tiny_spec("slak_t"), spec_path)
    out = tmp_path / "deep" / "tiny.html"
    result = CliRunner().invoke(main, ["report", str(spec_path), "--out", str(out), "--resolution", "128"])
    assert result.exit_code == 0, result.output
    page = parse(out.read_text(encoding="utf-8"))
    stage_table = next(table for table in page.tables if table[0] == STAGE_HEADERS)
    assert [row[8] for row in stage_table[1:]] == ["32x32", "16x16", "8x8", "4x4"]
    assert "Effective receptive field" not in page.headings


@pytest.mark.parametrize("arguments, message", [
    (["no_such_preset"], "no_such_preset"),
    (["pelk_t", "--erf", "--images", "{tmp}/nowhere"], "nowhere: not a directory of images"),
    (["pelk_t", "--num-images", "2"], "--images and --num-images choose the ERF's images: add --erf"),
])
def test_cli_mistakes_are_explained(tmp_path, arguments, message):
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    result = CliRunner().invoke(main, ["report", *arguments, "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.html").exists()


def test_cli_refuses_an_output_under_a_file_before_measuring_the_erf(tmp_path, monkeypatch):
    import compiler.erf
    measured = []
    monkeypatch.setattr(compiler.erf, "mean_contribution", lambda *args, **kwargs: measured.append(args))
    (tmp_path / "notes").write_text("a file")
    out = tmp_path / "notes" / "r.html"
    result = CliRunner().invoke(main, ["report", "pelk_t", "--erf", "--num-images", "1", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is a file, not a directory" in result.output and measured == []
