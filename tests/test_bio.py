"""Specification of albert_batch.training.bio and .metrics: from labelled character spans to token labels,
and the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from albert_batch.errors import InputError
from albert_batch.training.bio import IGNORE_INDEX, align_tokens, bio_labels, validate_spans
from albert_batch.training.metrics import classification_metrics, span_metrics

LABELS = bio_labels(["PER", "LOC", "ORG"])
LABEL2ID = {label: i for i, label in enumerate(LABELS)}
SENTENCE = "Anna Schmidt met Zhang Wei in New York for Acme Corp."
SENTENCE_SPANS = [
    {"start": 0, "end": 12, "label": "PER"},   # Anna Schmidt
    {"start": 17, "end": 26, "label": "PER"},  # Zhang Wei
    {"start": 30, "end": 38, "label": "LOC"},  # New York
    {"start": 43, "end": 52, "label": "ORG"},  # Acme Corp (the full stop stays outside)
]


def tags(spans, offsets, special=None) -> list[str]:
    """align_tokens with hand-built offsets, read back as tag names ("-" for IGNORE_INDEX)."""
    offsets = np.array(offsets, dtype=np.int64).reshape(-1, 2)
    special = np.zeros(len(offsets), dtype=bool) if special is None else np.array(special, dtype=bool)
    ids = align_tokens(spans, offsets, special, LABEL2ID)
    assert ids.dtype == np.int64 and ids.shape == (len(offsets),)
    return ["-" if i == IGNORE_INDEX else LABELS[i] for i in ids]


# --- bio_labels -----------------------------------------------------------------------------------------------


def test_bio_labels_put_o_first_then_b_and_i_per_type_in_the_given_order():
    assert bio_labels(["PER", "LOC"]) == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    assert bio_labels([]) == ("O",)


def test_bio_labels_refuse_a_repeated_type():
    with pytest.raises(ValueError, match="PER"):
        bio_labels(["PER", "LOC", "PER"])


# --- align_tokens with hand-built offsets ---------------------------------------------------------------------


def test_a_token_that_only_partly_overlaps_an_entity_still_gets_its_tag():
    # "Hamburger" as "Ham" + "burger"; the entity is only "Ha", inside the first piece.
    assert tags([(0, 2, "LOC")], [(0, 3), (3, 9)]) == ["B-LOC", "O"]
    # An entity strictly inside one piece: "burger"[2:4].
    assert tags([(5, 7, "ORG")], [(0, 3), (3, 9)]) == ["O", "B-ORG"]


def test_an_entity_over_several_pieces_starts_with_b_and_continues_with_i():
    # "Schwarzenegger" as "Schwar" + "zene" + "gger", then " said".
    assert tags([(0, 14, "PER")], [(0, 6), (6, 10), (10, 14), (15, 19)]) == ["B-PER", "I-PER", "I-PER", "O"]


def test_every_sub_word_piece_of_every_word_in_the_entity_is_trained():
    # "Anna Schmidt met": "An" "na" "Sch" "midt" "met"
    offsets = [(0, 2), (2, 4), (5, 8), (8, 12), (13, 16)]
    assert tags([(0, 12, "PER")], offsets) == ["B-PER", "I-PER", "I-PER", "I-PER", "O"]


def test_two_adjacent_entities_of_the_same_type_each_start_with_b():
    # "Anna Bob": two people separated by a space ...
    assert tags([(0, 4, "PER"), (5, 8, "PER")], [(0, 4), (5, 8)]) == ["B-PER", "B-PER"]
    # ... and two touching without any gap, each over two pieces.
    offsets = [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert tags([(0, 4, "PER"), (4, 8, "PER")], offsets) == ["B-PER", "I-PER", "B-PER", "I-PER"]


def test_adjacent_entities_of_different_types():
    # "Paris Acme" and "ParisAcme"
    assert tags([(0, 5, "LOC"), (6, 10, "ORG")], [(0, 5), (6, 10)]) == ["B-LOC", "B-ORG"]
    assert tags([(0, 5, "LOC"), (5, 9, "ORG")], [(0, 3), (3, 5), (5, 9)]) == ["B-LOC", "I-LOC", "B-ORG"]


def test_special_tokens_and_empty_offsets_are_ignored_by_the_loss():
    # [CLS] Anna <empty> Schmidt [SEP] <pad> <pad>; padding has an empty offset but is not flagged special.
    offsets = [(0, 0), (0, 4), (4, 4), (5, 12), (0, 0), (0, 0), (0, 0)]
    special = [True, False, False, False, True, False, False]
    assert tags([(0, 12, "PER")], offsets, special) == ["-", "B-PER", "-", "I-PER", "-", "-", "-"]
    # A special token is ignored even when its offsets fall inside an entity.
    assert tags([(0, 4, "PER")], [(0, 4), (0, 4)], [True, False]) == ["-", "B-PER"]


def test_a_lone_sentencepiece_marker_takes_the_b_and_the_following_piece_the_i():
    # "met Anna": "▁" (0,1) "met" (0,3) "▁" (4,5) "A" (4,5) "nna" (5,8): each lone "▁" shares the next character.
    offsets = [(0, 1), (0, 3), (4, 5), (4, 5), (5, 8)]
    assert tags([(4, 8, "PER")], offsets) == ["O", "O", "B-PER", "I-PER", "I-PER"]


def test_a_token_straddling_two_entities_belongs_to_the_first_and_the_second_starts_with_b():
    # An <unk> piece covering "xy" of "xyz", where "x" and "yz" are different entities.
    assert tags([(0, 1, "PER"), (1, 3, "ORG")], [(0, 2), (2, 3)]) == ["B-PER", "B-ORG"]


def test_spans_may_come_in_any_order_and_no_spans_means_all_o():
    offsets = [(0, 5), (6, 10)]
    assert tags([(6, 10, "ORG"), (0, 5, "LOC")], offsets) == ["B-LOC", "B-ORG"]
    assert tags([], offsets, [False, True]) == ["O", "-"]
    assert tags([], []) == []


def test_a_label_the_model_does_not_know_is_refused_naming_it_and_the_known_labels():
    with pytest.raises(InputError, match=r"'MISC'.*known labels: O, B-PER"):
        tags([(0, 4, "MISC")], [(0, 4)])


def test_offsets_and_special_must_have_matching_shapes():
    with pytest.raises(ValueError, match="shape"):
        align_tokens([], np.zeros((3, 3), dtype=np.int64), np.zeros(3, dtype=bool), LABEL2ID)
    with pytest.raises(ValueError, match="shape"):
        align_tokens([], np.zeros((3, 2), dtype=np.int64), np.zeros(2, dtype=bool), LABEL2ID)


# --- validate_spans -------------------------------------------------------------------------------------------


def test_valid_spans_come_back_sorted_as_tuples():
    text = "Paris and Acme"
    spans = [{"start": 10, "end": 14, "label": "ORG"}, {"start": 0, "end": 5, "label": "LOC"}]
    assert validate_spans(text, spans, row=1) == [(0, 5, "LOC"), (10, 14, "ORG")]


def test_spans_touching_end_to_start_and_spans_with_surrounding_whitespace_are_accepted():
    text = " Paris Acme "
    spans = [{"start": 0, "end": 6, "label": "LOC"}, {"start": 6, "end": 12, "label": "ORG"}]
    assert validate_spans(text, spans, row=0) == [(0, 6, "LOC"), (6, 12, "ORG")]


def test_no_spans_and_numpy_integer_offsets_are_fine():
    assert validate_spans("text", [], row=0) == []
    assert validate_spans("text", None, row=0) == []
    spans = [{"start": np.int64(0), "end": np.int32(4), "label": "ORG"}]
    result = validate_spans("text", spans, row=0)
    assert result == [(0, 4, "ORG")] and all(type(v) is int for v in result[0][:2])


@pytest.mark.parametrize(
    "spans",
    [
        [{"start": 0, "end": 5, "label": "LOC"}, {"start": 4, "end": 9, "label": "ORG"}],  # sharing one character
        [{"start": 0, "end": 9, "label": "LOC"}, {"start": 2, "end": 4, "label": "ORG"}],  # nested
        [{"start": 2, "end": 4, "label": "LOC"}, {"start": 2, "end": 4, "label": "LOC"}],  # the same span twice
        [{"start": 6, "end": 9, "label": "PER"}, {"start": 0, "end": 7, "label": "LOC"}],  # out of order
    ],
)
def test_overlapping_spans_are_refused_naming_the_row(spans):
    with pytest.raises(InputError, match="overlap") as caught:
        validate_spans("Paris Acme", spans, row="doc-17")
    assert "doc-17" in str(caught.value)


@pytest.mark.parametrize(("start", "end"), [(0, 11), (-1, 3), (11, 12)])
def test_offsets_beyond_the_text_are_refused(start, end):
    with pytest.raises(InputError, match="offsets beyond the text") as caught:
        validate_spans("Paris Acme", [{"start": start, "end": end, "label": "LOC"}], row=42)
    message = str(caught.value)
    assert "row 42" in message and f"'start': {start}" in message


@pytest.mark.parametrize(("start", "end"), [(3, 3), (5, 2)])
def test_an_empty_span_is_refused(start, end):
    with pytest.raises(InputError, match="empty span") as caught:
        validate_spans("Paris Acme", [{"start": start, "end": end, "label": "LOC"}], row=7)
    assert "row 7" in str(caught.value)


@pytest.mark.parametrize(
    ("span", "problem"),
    [
        ({"start": 0, "label": "LOC"}, "missing end"),
        ({"start": 0, "end": None, "label": "LOC"}, "missing end"),
        ({"end": 3}, "missing start, label"),
        ({"start": 0.0, "end": 3, "label": "LOC"}, "integer"),
        ({"start": "0", "end": 3, "label": "LOC"}, "integer"),
        ({"start": False, "end": True, "label": "LOC"}, "integer"),
        ({"start": 0, "end": 3, "label": ""}, "label"),
        ({"start": 0, "end": 3, "label": 5}, "label"),
        ((0, 3, "LOC"), "mapping"),
    ],
)
def test_malformed_spans_are_refused_naming_the_row_and_the_problem(span, problem):
    with pytest.raises(InputError, match=problem) as caught:
        validate_spans("Paris Acme", [span], row=3)
    assert "row 3" in str(caught.value)


# --- metrics --------------------------------------------------------------------------------------------------


def test_classification_metrics_on_a_hand_computed_example():
    # class 0: tp 1, support 2, predicted 2 -> F1 2/4 = 0.5
    # class 1: tp 2, support 2, predicted 3 -> F1 4/5 = 0.8
    # class 2: tp 0, support 1, predicted 0 -> F1 0
    # class 3: neither true nor predicted -> skipped
    result = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], num_labels=4)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_classification_metrics_count_a_class_that_is_only_predicted():
    # class 2 is never true but predicted once: F1 0, and it is averaged in.
    result = classification_metrics([0, 1], [0, 2], num_labels=3)
    assert result == {"accuracy": pytest.approx(0.5), "macro_f1": pytest.approx((1.0 + 0.0 + 0.0) / 3)}


def test_classification_metrics_edge_cases():
    assert classification_metrics([], [], num_labels=3) == {"accuracy": 0.0, "macro_f1": 0.0}
    assert classification_metrics([2, 2], [2, 2], num_labels=3) == {"accuracy": 1.0, "macro_f1": 1.0}
    with pytest.raises(ValueError, match="items"):
        classification_metrics([0, 1], [0], num_labels=2)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 1], [0, 2], num_labels=2)


def test_span_metrics_count_only_exact_matches():
    gold = [[(0, 4, "PER"), (10, 15, "LOC")], [(3, 8, "ORG")], []]
    predicted = [
        [(0, 4, "PER"), (10, 16, "LOC")],   # the LOC ends one character late: wrong
        [(3, 8, "ORG"), (20, 25, "PER")],   # a spurious PER
        [(1, 2, "PER")],                    # another spurious one, in a document without entities
    ]
    result = span_metrics(gold, predicted)
    assert result["gold_entities"] == 3 and result["predicted_entities"] == 5 and result["correct_entities"] == 2
    assert result["precision"] == pytest.approx(2 / 5)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3))


def test_span_metrics_need_the_label_to_match_too_and_ignore_document_order_of_entities():
    result = span_metrics([[(0, 4, "PER"), (5, 9, "LOC")]], [{(5, 9, "LOC"), (0, 4, "ORG")}])
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((0.5, 0.5, 0.5))


def test_span_metrics_zero_denominators_and_length_mismatch():
    nothing = span_metrics([[], []], [[], []])
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)
    only_gold = span_metrics([[(0, 1, "PER")]], [[]])
    assert (only_gold["precision"], only_gold["recall"], only_gold["f1"]) == (0.0, 0.0, 0.0)
    assert span_metrics([], [])["f1"] == 0.0
    with pytest.raises(ValueError, match="documents"):
        span_metrics([[]], [[], []])


# --- with a real SentencePiece tokenizer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from albert_batch.training.model_init import train_tokenizer

    texts = [SENTENCE] * 50 + ["some other words here"] * 50
    folder = train_tokenizer(texts, Path(tmp_path_factory.mktemp("labels")) / "tok", vocab_size=60)
    return AutoTokenizer.from_pretrained(str(folder))


def encode(tokenizer, text: str, *, add_special_tokens: bool):
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    return np.array(enc["offset_mapping"], dtype=np.int64), np.array(enc["special_tokens_mask"], dtype=bool)


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_real_tokenizer_every_entity_is_b_then_i_over_exactly_its_characters(tokenizer, add_special_tokens):
    spans = validate_spans(SENTENCE, SENTENCE_SPANS, row=0)
    offsets, special = encode(tokenizer, SENTENCE, add_special_tokens=add_special_tokens)
    ids = align_tokens(spans, offsets, special, LABEL2ID)
    names = ["-" if i == IGNORE_INDEX else LABELS[i] for i in ids]

    assert all(names[i] == "-" for i in np.flatnonzero(special))
    assert special.any() == add_special_tokens

    claimed: set[int] = set()
    for start, end, label in spans:
        inside = [i for i, (s, e) in enumerate(offsets) if not special[i] and s < end and e > start]
        assert len(inside) >= 2, "the tiny vocabulary splits every entity into several pieces"
        assert inside == list(range(inside[0], inside[-1] + 1))
        assert [names[i] for i in inside] == [f"B-{label}"] + [f"I-{label}"] * (len(inside) - 1)
        covered = {c for i in inside for c in range(offsets[i][0], offsets[i][1])}
        # SentencePiece drops the spaces between words: the labelled tokens cover every other character of the
        # entity, and (word boundaries coinciding with token boundaries in this sentence) nothing outside it.
        assert covered == {c for c in range(start, end) if not SENTENCE[c].isspace()}
        claimed.update(inside)

    others = [names[i] for i in range(len(names)) if i not in claimed and not special[i]]
    assert others and set(others) == {"O"}


def test_lone_markers_sharing_the_next_characters_offset_are_labelled_like_the_word():
    # A SentencePiece quirk of lowercasing ALBERT tokenizers (albert-base-v2 among them): "▁" can be a token of
    # its own whose offset is that of the first character of the word it precedes: "▁", "a", "nna", "▁", "met".
    text = "Anna met"
    offsets = np.array([(0, 1), (0, 1), (1, 4), (5, 6), (5, 8)])
    ids = align_tokens(validate_spans(text, [{"start": 0, "end": 4, "label": "PER"}], row=0), offsets,
                       np.zeros(len(offsets), dtype=bool), LABEL2ID)
    assert [LABELS[i] for i in ids] == ["B-PER", "I-PER", "I-PER", "O", "O"]
