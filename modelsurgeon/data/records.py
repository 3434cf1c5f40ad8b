"""Which part of a record is the document: a text field, or a question/answer pair put in a template.

Detection, on a file's first record, in this order:
1. `text_field` when given (`--text-field`);
2. a `text` field (open-web-math: text, url, date, metadata), then a `content` field;
3. a question-like and an answer-like field, formatted with `PAIR_TEMPLATE`
   (Maths-College: instruction, output). An Alpaca-style non-empty `input` is appended to the
   question after a blank line.
Anything else is a DataError listing the fields that are there.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelsurgeon.errors import DataError

TEXT_FIELDS = ("text", "content")
QUESTION_FIELDS = ("instruction", "question", "prompt", "problem", "query")
ANSWER_FIELDS = ("output", "response", "answer", "solution", "completion")
CONTEXT_FIELD = "input"
PAIR_TEMPLATE = "### Question\n{question}\n\n### Answer\n{answer}"


@dataclass(frozen=True)
class TextRule:
    """How to turn one record into one document."""

    field: str | None = None  # the document is this field's value ...
    question: str | None = None  # ... or PAIR_TEMPLATE over these two fields
    answer: str | None = None
    context: str | None = None  # appended to the question when present and non-empty

    def describe(self) -> str:
        if self.field is not None:
            return f"field {self.field!r}"
        extra = f" (+ {self.context!r})" if self.context else ""
        return f"template {self.question!r}{extra} / {self.answer!r}"

    def apply(self, record: dict, source: str) -> str:
        """The document text of `record`; "" when the field is missing or null."""
        if self.field is not None:
            return _as_text(record, self.field, source)
        question = _as_text(record, self.question, source)
        context = _as_text(record, self.context, source) if self.context else ""
        if context.strip():
            question = f"{question}\n\n{context}"
        answer = _as_text(record, self.answer, source)
        if not question.strip() and not answer.strip():
            return ""
        return PAIR_TEMPLATE.format(question=question.strip(), answer=answer.strip())


def _as_text(record: dict, field: str, source: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. numeric answers
    raise DataError(
        f"{source}: field {field!r} holds a {type(value).__name__}, not text",
        hint="pick a text field with --text-field",
    )


def resolve_rule(fields: list[str], source: str, text_field: str | None = None) -> TextRule:
    """The TextRule for records with these `fields` (see the module docstring for the order).

    Raises:
        DataError: `text_field` is not among the fields, or no known field or pair is.
    """
    listed = ", ".join(repr(f) for f in fields) or "(none)"
    if text_field is not None:
        if text_field not in fields:
            raise DataError(
                f"{source}: no field {text_field!r} (asked by --text-field); the fields are {listed}",
                hint="pass one of the listed fields to --text-field",
            )
        return TextRule(field=text_field)
    for name in TEXT_FIELDS:
        if name in fields:
            return TextRule(field=name)
    question = next((f for f in QUESTION_FIELDS if f in fields), None)
    answer = next((f for f in ANSWER_FIELDS if f in fields), None)
    if question and answer:
        return TextRule(question=question, answer=answer, context=CONTEXT_FIELD if CONTEXT_FIELD in fields else None)
    raise DataError(
        f"{source}: no text field found; the fields are {listed}",
        hint=f"pass --text-field FIELD, or give the records a {' or '.join(map(repr, TEXT_FIELDS))} field "
        f"or a question/answer pair such as 'instruction'/'output'",
    )
