"""A published partition's quality figures, drift flags and report: what they count, when drift is flagged,
and the page a person opens."""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow as pa
import pytest

from albert_batch import RunConfig, load_predictor, run
from albert_batch.cli import main as cli_main
from albert_batch.contract import ENTITY_TYPE
from albert_batch.errors import ConfigError, ExitCode
from albert_batch.pipeline.validate import validate_partition
from albert_batch.quality import QUALITY, REPORT, QualityFigures, QualityGate, Sketch, charts
from albert_batch.quality.charts import Series
from albert_batch.quality.figures import figures, total_variation
from albert_batch.quality.report import render
from support import TRICKY_TEXTS, write_corpus

SECTIONS = ("Drift", "Run", "Models", "Rows", "Classification", "Named entities", "Most frequent entity texts",
            "Text length and throughput")


def rows(n: int, *, start: float = 0.0) -> dict[str, pa.Array]:
    """Accepted rows as the writer sees them: token counts, processing times, a classification, entities."""
    labels = ["positive" if i % 3 else "negative" for i in range(n)]
    entities = [[{"label": "PER" if i % 2 else "LOC", "text": f"name {i % 4}", "start": 0, "end": 6, "score": 0.9}]
                * (i % 3) for i in range(n)]
    return {
        "tokens": pa.array([7 * i for i in range(n)], pa.int32()),
        "processed_at": pa.array([dt.datetime.fromtimestamp(1_800_000_000 + start + i / 10, dt.UTC) for i in range(n)],
                                 pa.timestamp("us", tz="UTC")),
        "classifications": pa.table({"label": labels, "score": [(i % 10) / 10 + 0.05 for i in range(n)],
                                     "truncated": [i % 7 == 0 for i in range(n)]}),
        "entities": pa.array(entities, pa.list_(ENTITY_TYPE)),
    }


def sketch_of(columns: dict[str, pa.Array]) -> Sketch:
    return Sketch.of(tokens=columns["tokens"], processed_at=columns["processed_at"],
                     classifications=columns["classifications"], entities=columns["entities"])


def partition_figures(sketch: Sketch, partition: str, *, rejected: int = 0, reason: str = "blank_text") -> QualityFigures:
    run_info = {"run_id": f"run-{partition}", "output": "/out", "models": {}, "precision": "fp32", "seconds": 10.0,
                "rows_per_second": 5.0}
    return figures(sketch, partition=partition, run=run_info, input_rows=sketch.rows + rejected,
                   rejects_by_reason={reason: rejected} if rejected else {})


def test_sketches_of_pieces_add_up_to_the_sketch_of_all_their_rows():
    whole = rows(60)
    halves = [{name: column.slice(a, 30) for name, column in whole.items()} for a in (0, 30)]
    merged = Sketch.merged(sketch_of(half).as_dict() for half in halves)  # as the pieces' records hold them
    assert merged == sketch_of(whole)
    assert merged.rows == 60 and sum(merged.tokens) == 60 and merged.labels == {"negative": 20, "positive": 40}
    assert sum(merged.entities_per_doc) == 60 and merged.entity_types == {"LOC": 30, "PER": 30}
    assert sum(sum(counts) for counts in merged.scores.values()) == 60
    assert merged.truncated == 9 and merged.low_confidence == 30


def test_figures_give_shares_histograms_and_the_most_frequent_entity_texts():
    found = partition_figures(sketch_of(rows(60)), "dt=2026-11-01", rejected=15)
    assert found.rows == {"input": 75, "processed": 60, "rejected": 15, "rejected_by_reason": {"blank_text": 15}}
    assert found.reject_rate == pytest.approx(0.2)
    assert found.classification["label_shares"] == pytest.approx({"negative": 1 / 3, "positive": 2 / 3})
    assert found.classification["truncated_share"] == pytest.approx(9 / 60)
    assert found.entities["mean_per_document"] == pytest.approx(1.0)
    assert [list(pair) for pair in found.entities["top_texts"]["PER"]] == [["name 1", 15], ["name 3", 15]]
    assert sum(found.throughput["rows"]) == 60 and found.throughput["bucket_s"] >= 1
    assert QualityFigures.from_json(found.to_json()).reject_rate == found.reject_rate


def test_total_variation_is_the_share_of_rows_whose_label_would_have_to_change():
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1
    assert total_variation({"a": 0.7, "b": 0.3}, {"a": 0.4, "b": 0.4, "c": 0.2}) == pytest.approx(0.3)


def test_drift_flags_a_shifted_label_mix_and_reject_rate_but_not_the_same_mix():
    before = partition_figures(sketch_of(rows(60)), "dt=2026-11-01")
    same = partition_figures(sketch_of(rows(60, start=86_400)), "dt=2026-11-02").with_drift(before)
    assert same.drift["against"] == "dt=2026-11-01" and same.shifted == []
    flipped = rows(60)
    flipped["classifications"] = flipped["classifications"].set_column(
        0, "label", pa.array(["negative" if i % 3 else "positive" for i in range(60)]))
    shifted = partition_figures(sketch_of(flipped), "dt=2026-11-03", rejected=10).with_drift(before)
    assert shifted.shifted == ["label_shift", "reject_rate_change"]
    assert shifted.drift["checks"]["label_shift"]["value"] == pytest.approx(1 / 3)


def test_a_quality_gate_breaches_on_its_limits_or_else_on_the_drift_flags():
    before = partition_figures(sketch_of(rows(60)), "dt=2026-11-01")
    after = partition_figures(sketch_of(rows(60)), "dt=2026-11-02", rejected=20).with_drift(before)
    assert QualityGate().breaches(after) == [
        "reject_rate_change 0.2500 against dt=2026-11-01 > its drift threshold 0.02"]
    assert QualityGate(max_reject_rate_change=0.3).breaches(after) == []
    assert QualityGate(max_reject_rate=0.1, on_breach="fail").breaches(after)[0] == "reject rate 0.2500 > max_reject_rate 0.1"
    assert after.error_rate == 0 and QualityGate(max_error_rate=0, max_reject_rate_change=1).breaches(after) == []
    errors = partition_figures(sketch_of(rows(60)), "dt=2026-11-02", rejected=3, reason="processing_error")
    assert errors.error_rate == pytest.approx(3 / 63)
    assert QualityGate(max_error_rate=0.01).breaches(errors) == ["processing error rate 0.0476 > max_error_rate 0.01"]
    with pytest.raises(ConfigError, match="unknown keys"):
        QualityGate.from_mapping({"max_label_drift": 0.2})
    with pytest.raises(ConfigError, match="on_breach must be 'warn' or 'fail'"):
        QualityGate(on_breach="stop")
    with pytest.raises(ConfigError, match="max_reject_rate must be a number >= 0"):
        QualityGate(max_reject_rate="high")


def page_charts(page: str) -> dict[str, ET.Element]:
    """The page's inline charts by title, each parsed as XML: a malformed one raises here."""
    found = {}
    for svg in re.findall(r"<svg\b.*?</svg>", page, re.S):
        chart = ET.fromstring(svg)
        found[chart.findtext("title")] = chart
    return found


def bar_heights(chart: ET.Element) -> list[float]:
    """The heights of a chart's bars (each carries a tooltip; the legend's swatches do not), in drawing order."""
    return [float(rect.get("height")) for rect in chart.iter("rect") if rect.find("title") is not None]


def test_the_report_is_one_offline_page_with_every_section_and_valid_plots():
    before = partition_figures(sketch_of(rows(60)), "dt=2026-11-01")
    after = partition_figures(sketch_of(rows(90)), "dt=2026-11-02").with_drift(before)
    page = render(after, before)
    for section in SECTIONS:
        assert f">{section}" in page, section
    assert "<script" not in page and "http://" not in page and "https://" not in page  # opens offline
    plots = page_charts(page)
    assert set(plots) == {"Label distribution", "Score distribution per label", "Entities per type",
                          "Entities per document", "Text length", "Throughput (rows written, by processing time)"}
    assert all(float(chart.get("width")) > 300 for chart in plots.values())
    labels = sorted(after.classification["label_shares"])  # the earlier partition's bars, then this one's
    shares = [f.classification["label_shares"][label] for f in (before, after) for label in labels]
    heights = bar_heights(plots["Label distribution"])
    assert heights == pytest.approx([share * heights[0] / shares[0] for share in shares], abs=0.2)
    assert sum(bar_heights(plots["Text length"])) > 0 and len(bar_heights(plots["Text length"])) == len(after.tokens["counts"])


def test_a_chart_of_nothing_or_of_markup_is_still_well_formed_svg():
    empty = [charts.bars("Entities per type", [], [Series("this partition", [], "#000")], ylabel="share"),
             charts.lines("Throughput", [], [Series("rows/s", [], "#000")], ylabel="rows/s", points=True)]
    assert all(not bar_heights(ET.fromstring(svg)) for svg in empty)
    marked = ET.fromstring(charts.bars("<b>&", ["<x>"], [Series("<s>", [3.0], "#000")], ylabel='"q"', legend=True))
    assert marked.findtext("title") == "<b>&" and {"<x>", "<s>", '"q"'} <= set(marked.itertext())


def test_entity_texts_are_escaped_in_the_report():
    columns = rows(6)
    columns["entities"] = pa.array([[{"label": "ORG", "text": "<script>alert(1)</script>", "start": 0, "end": 25,
                                      "score": 0.9}]] * 6, pa.list_(ENTITY_TYPE))
    page = render(partition_figures(sketch_of(columns), "dt=2026-11-01"))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def run_partition(tmp_path: Path, tiny_models: dict[str, str], day: str, texts: list[str | None]):
    folder = tmp_path / f"input-{day}"
    folder.mkdir()
    write_corpus(folder / "part-0.parquet", list(range(len(texts))), texts)
    return run(RunConfig(input=str(folder), output=str(tmp_path / "output"), classifier_model=tiny_models["classifier"],
                         ner_model=tiny_models["ner"], partition=[f"dt={day}"], precision="fp32"))


def test_every_run_publishes_a_report_and_flags_a_partition_built_to_shift(tmp_path, tiny_models, ray_cluster,
                                                                           capsys):
    texts = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} ({i})" for i in range(48)]
    labels = [r["label"] for r in load_predictor("classify", tiny_models["classifier"], precision="fp32")(texts)]
    most = max(set(labels), key=labels.count)
    # A rerun of the same corpus, and one of texts the model gives the label it gives least, with blank rows.
    lopsided = [t for t, label in zip(texts, labels, strict=True) if label != most] * 3 + ["  "] * 6
    out = tmp_path / "output"
    first = run_partition(tmp_path, tiny_models, "2026-11-01", texts)
    rerun = run_partition(tmp_path, tiny_models, "2026-11-02", list(reversed(texts)))
    shifted = run_partition(tmp_path, tiny_models, "2026-11-03", lopsided)

    assert first.report == str(out / "classifications/dt=2026-11-01" / REPORT) and first.shifted == []
    assert rerun.shifted == []
    assert shifted.shifted == ["label_shift", "reject_rate_change"]
    for table in ("classifications", "entities", "rejects"):
        folder = out / table / "dt=2026-11-03"
        assert (folder / REPORT).is_file() and (folder / QUALITY).is_file()
    validate_partition(out, "dt=2026-11-03", ["classify", "ner"], run_id=shifted.run_id)  # reports are not data

    quiet = json.loads((out / "rejects/dt=2026-11-02" / QUALITY).read_text())
    assert quiet["drift"]["against"] == "dt=2026-11-01"
    assert all(check["value"] == 0 for check in quiet["drift"]["checks"].values())
    found = json.loads((out / "rejects/dt=2026-11-03" / QUALITY).read_text())
    assert found["drift"]["against"] == "dt=2026-11-02" and found["drift"]["shifted"]
    assert found["classification"]["labels"].get(most, 0) == 0
    assert found["rows"] == {"input": len(lopsided), "processed": len(lopsided) - 6, "rejected": 6,
                             "rejected_by_reason": {"blank_text": 6}}
    assert sum(found["tokens"]["counts"]) == len(lopsided) - 6
    page = (out / "classifications/dt=2026-11-03" / REPORT).read_text()
    for section in SECTIONS:
        assert f">{section}" in page, section
    assert "label_shift" in page and ">shifted<" in page and len(page_charts(page)) == 6

    # On demand, against any published partition.
    target = tmp_path / "compare.html"
    code = cli_main(["report", "--output", str(out), "--partition", "dt=2026-11-03", "--against", "dt=2026-11-01",
                     "--to", str(target)])
    printed = capsys.readouterr().out
    assert code == 0 and f"report of dt=2026-11-03: {target}" in printed
    assert "drift against dt=2026-11-01: label_shift" in printed and "SHIFTED" in printed
    assert "Drift against dt=2026-11-01" in target.read_text()
    assert cli_main(["report", "--output", str(out), "--partition", "dt=2026-10-01"]) == ExitCode.FAILED
    assert "partition dt=2026-10-01 of" in capsys.readouterr().err


def test_a_previous_partition_whose_figures_cannot_be_read_leaves_drift_unmeasured(tmp_path, caplog):
    from albert_batch.quality import partition_report

    folder = tmp_path / "rejects" / "dt=2026-11-01"
    folder.mkdir(parents=True)
    (folder / QUALITY).write_text("{not json")
    found, files = partition_report(sketch_of(rows(30)), output=str(tmp_path), partition_path="dt=2026-11-02",
                                    run={"run_id": "r"}, input_rows=30, rejects_by_reason={})
    assert found.drift is None and json.loads(files[QUALITY])["drift"] is None
    assert "drift not measured: the figures of dt=2026-11-01 cannot be read" in caplog.text
