"""Training rows -> pre-tokenized SFT samples: `input_ids` plus a `completion_mask`.

Rows come in one of four layouts (see `FORMATS`); each becomes a chat rendered with the
tokenizer's chat template. `completion_mask` is 1 on the tokens the loss is computed on
(the assistant's reply and the tokens that close its turn) and 0 elsewhere; TRL's
SFTTrainer takes such a dataset as is (it skips its own tokenization when `input_ids` is
present) and the SWAA trainer also reads its first 1 as the start of full attention
(FA decode).

How the assistant tokens are found:
- single-turn rows (one reply at the end): the prompt rendered with
  add_generation_prompt=True must be a token prefix of the full rendering, and every token
  after it is supervised. Works with any chat template (Qwen3's official one included).
- multi-turn `messages` rows: return_assistant_tokens_mask, which needs a template with
  {% generation %} ... {% endgeneration %} around assistant replies.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from datasets import Dataset, Features, List, Value, load_dataset
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Layout name -> the columns that identify it, in detection order (fusang_long before
# prompt_completion: both have `prompt`).
FORMATS = {
    "fusang_long": ("prompt", "response"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction_output": ("instruction", "output"),
}
DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")  # the regex transformers itself checks

_DROP = "_swaa_drop_reason"  # per encoded row: "" to keep, else why it is dropped
OUTPUT_FEATURES = Features(
    {"input_ids": List(Value("int32")), "completion_mask": List(Value("int8")), _DROP: Value("string")}
)


# ------------------------------------------------------------------------------------------
# Loading rows
# ------------------------------------------------------------------------------------------
def load_rows(path: str | Path, split: str = "train") -> Dataset:
    """Rows of a local parquet/json/jsonl/csv file, a local directory of those, or a Hub dataset."""
    local = Path(path).expanduser()
    if local.is_file():
        builder = DATA_FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"{local}: unsupported file type; use one of {sorted(DATA_FILE_BUILDERS)}")
        if local.stat().st_size == 0:
            raise ValueError(f"data file {local} is empty")
        if builder != "parquet":  # pyarrow reads invalid UTF-8 without complaint, then fails on access
            check_text_file(local)
        try:  # naming the file's split `split` lets any split name load a single file
            return load_dataset(builder, data_files={split: str(local)}, split=split)
        except Exception as error:  # pyarrow's errors name neither the file nor the line
            raise ValueError(unreadable_file_message(local, builder, error)) from error
    if local.is_dir():
        suffixes = {p.suffix.lower() for p in local.rglob("*") if p.is_file()}
        builders = {DATA_FILE_BUILDERS[s] for s in suffixes if s in DATA_FILE_BUILDERS}
        if len(builders) != 1:
            found = "no data files" if not builders else f"files of several types {sorted(builders)}"
            raise ValueError(
                f"{local}: found {found}; a data directory holds files of one of {sorted(DATA_FILE_BUILDERS)}"
            )
        # datasets infers the splits from the file names (train.parquet, test-00000.parquet, ...).
        return load_dataset(str(local), split=split)
    if local.suffix.lower() in DATA_FILE_BUILDERS:
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        return load_dataset(str(path), split=split)
    except Exception as error:  # offline, unknown id, bad split: say what was tried
        raise ValueError(
            f"{path!r} is not a local file or directory, and loading it from the Hub failed: {error}"
        ) from error


def check_text_file(path: Path, chunk_bytes: int = 1 << 24) -> None:
    """Refuse a text data file that is blank or not UTF-8, naming the first bad line."""
    decoder, blank = codecs.getincrementaldecoder("utf-8")(), True
    with open(path, "rb") as stream:
        try:
            while chunk := stream.read(chunk_bytes):
                blank = blank and not chunk.strip()
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(unreadable_file_message(path, "text", None)) from None
    if blank:
        raise ValueError(f"data file {path} is empty")


def unreadable_file_message(path: Path, builder: str, error: Exception | None) -> str:
    """Why a data file cannot be read, naming the file and, for text files, the first bad line."""
    if builder in ("json", "csv", "text"):
        with open(path, "rb") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return f"data file {path}, line {number}: not UTF-8 (byte 0x{line[bad.start]:02x} at column {bad.start + 1})"
                if builder == "json" and path.suffix.lower() == ".jsonl" and text.strip():
                    try:
                        json.loads(text)
                    except json.JSONDecodeError as bad:
                        return f"data file {path}, line {number}: not valid JSON ({bad.msg}, column {bad.colno})"
    if error is None:
        return f"data file {path} is not UTF-8 text"
    cause = error.__cause__ or error.__context__ or error
    return f"data file {path} cannot be read as {builder}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"


def detect_format(columns: Iterable[str]) -> str:
    """The row layout named by a dataset's columns, one of FORMATS."""
    columns = set(columns)
    for name, required in FORMATS.items():
        if columns.issuperset(required):
            return name
    layouts = "; ".join(f"{name}: {' + '.join(required)}" for name, required in FORMATS.items())
    raise ValueError(
        f"cannot tell the data format from the columns {sorted(columns)}; accepted layouts: {layouts} "
        "(fusang_long may add question, answer, judge; instruction_output may add input)"
    )


# ------------------------------------------------------------------------------------------
# Rows -> chat messages
# ------------------------------------------------------------------------------------------
def _text(row: dict, field: str, index: int, *, allow_empty: bool = False, name: str | None = None) -> str:
    """row[field] as a non-empty string; errors call it `name` (default: field)."""
    value, name = row.get(field), name or field
    if value is None:
        raise ValueError(f"row {index}: field {name!r} is missing")
    if not isinstance(value, str):
        raise ValueError(f"row {index}: field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"row {index}: field {name!r} is empty")
    return value


def _messages(row: dict, field: str, index: int) -> list[dict]:
    """A list of {role, content} messages; assistant replies must not be empty."""
    value = row.get(field)
    if value is None:
        raise ValueError(f"row {index}: field {field!r} is missing")
    if not isinstance(value, list) or not value:
        raise ValueError(f"row {index}: field {field!r} must be a non-empty list of messages")
    messages = []
    for k, message in enumerate(value):
        where = f"{field}[{k}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"row {index}: field {where!r} must be a message with a string 'role'")
        is_reply = message["role"] == "assistant"
        content = _text(message, "content", index, allow_empty=not is_reply, name=f"{where}.content")
        messages.append({"role": message["role"], "content": content})
    return messages


def single_turn(row: dict, fmt: str, index: int) -> tuple[list[dict], list[dict], str]:
    """(prompt messages, reply messages, name of the reply field) of a one-reply row."""
    if fmt == "fusang_long":
        prompt, reply = [{"role": "user", "content": _text(row, "prompt", index)}], _text(row, "response", index)
        return prompt, [{"role": "assistant", "content": reply}], "response"
    if fmt == "instruction_output":
        instruction, extra = _text(row, "instruction", index), row.get("input")
        user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        reply = _text(row, "output", index)
        return [{"role": "user", "content": user}], [{"role": "assistant", "content": reply}], "output"
    if fmt == "prompt_completion":
        if isinstance(row.get("prompt"), list):  # conversational: lists of messages
            prompt, reply = _messages(row, "prompt", index), _messages(row, "completion", index)
            if not any(m["role"] == "assistant" for m in reply):
                raise ValueError(f"row {index}: field 'completion' has no assistant message")
            return prompt, reply, "completion"
        prompt, reply = _text(row, "prompt", index), _text(row, "completion", index)
        return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": reply}], "completion"
    raise ValueError(f"format {fmt!r} has no single-turn reading")


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


# ------------------------------------------------------------------------------------------
# Messages -> input_ids + completion_mask
# ------------------------------------------------------------------------------------------
def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **kwargs) -> dict:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


def encode_single_turn(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict], reply: list[dict], index: int, field: str
) -> tuple[list[int], list[int]]:
    """Supervise every token after the prompt's rendering with the generation prompt."""
    prompt_ids = _render(tokenizer, prompt, add_generation_prompt=True)["input_ids"]
    full_ids = _render(tokenizer, prompt + reply)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            f"row {index}: field {field!r}: the chat template renders the prompt with add_generation_prompt=True "
            "differently from the start of the whole conversation, so the assistant tokens cannot be marked; "
            "use a template whose generation prompt is exactly how an assistant turn starts"
        )
    if len(full_ids) == len(prompt_ids):
        raise ValueError(f"row {index}: field {field!r}: the chat template rendered no tokens for the reply")
    return full_ids, [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))


def encode_multi_turn(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], index: int, has_generation_markers: bool
) -> tuple[list[int], list[int]]:
    """Supervise the tokens the template's {% generation %} blocks mark (every assistant turn)."""
    if not has_generation_markers:
        raise ValueError(
            f"row {index}: field 'messages' holds a multi-turn conversation; marking its assistant turns needs a "
            "chat template with {% generation %} ... {% endgeneration %} around each assistant reply, and this "
            "tokenizer's template has none (set tokenizer.chat_template to one that has, e.g. TRL's "
            "*_training.jinja templates)"
        )
    rendered = _render(tokenizer, messages, return_assistant_tokens_mask=True)
    mask = list(rendered["assistant_masks"])
    if 1 not in mask:
        raise ValueError(f"row {index}: field 'messages': the chat template marked no assistant tokens")
    return list(rendered["input_ids"]), mask


def encode_row(
    row: dict,
    index: int,
    *,
    tokenizer: PreTrainedTokenizerBase,
    fmt: str,
    system_prompt: str | None,
    judge_filter: bool,
    min_length: int,
    max_length: int | None,
    has_generation_markers: bool,
) -> dict:
    """One row -> input_ids, completion_mask and the reason to drop it ("" to keep)."""
    if fmt == "fusang_long" and judge_filter and "judge" in row and row["judge"] != 1:
        return {"input_ids": [], "completion_mask": [], _DROP: "judge"}
    if fmt == "messages":
        messages = with_system(_messages(row, "messages", index), system_prompt)
        replies = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        if not replies:
            raise ValueError(f"row {index}: field 'messages' has no assistant message")
        if replies == [len(messages) - 1]:  # one reply, at the end: no template markers needed
            ids, mask = encode_single_turn(tokenizer, messages[:-1], messages[-1:], index, "messages")
        else:
            ids, mask = encode_multi_turn(tokenizer, messages, index, has_generation_markers)
    else:
        prompt, reply, field = single_turn(row, fmt, index)
        ids, mask = encode_single_turn(tokenizer, with_system(prompt, system_prompt), reply, index, field)
    reason = ""
    if len(ids) < min_length:
        reason = "too_short"
    elif max_length is not None and len(ids) > max_length:
        reason = "too_long"
    return {"input_ids": ids, "completion_mask": mask, _DROP: reason}


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------
def resolve_format(columns: list[str], format: str) -> str:
    if format == "auto":
        return detect_format(columns)
    if format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {list(FORMATS)}, got {format!r}")
    missing = [c for c in FORMATS[format] if c not in columns]
    if missing:
        raise ValueError(
            f"format {format!r} needs the columns {list(FORMATS[format])}; missing {missing}, found {sorted(columns)}"
        )
    return format


JINJA_MARKERS = ("{%", "{{")


def load_chat_template(value: str) -> str:
    """The Jinja text of a chat template given inline or as the path of a file holding it (.jinja)."""
    if any(marker in value for marker in JINJA_MARKERS):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"data.chat_template: {value!r} is neither an existing file nor an inline Jinja template")
    text = path.read_text()
    if not any(marker in text for marker in JINJA_MARKERS):
        raise ValueError(f"data.chat_template: {path} holds no Jinja template ({{% ... %}} or {{{{ ... }}}})")
    return text


def chat_template_of(tokenizer: PreTrainedTokenizerBase) -> str:
    try:
        return tokenizer.get_chat_template()
    except ValueError as error:
        raise ValueError(f"the tokenizer needs a chat template to render training rows: {error}") from error


def log_drops(
    reasons: Counter, total: int, fmt: str, min_length: int, max_length: int | None, max_length_name: str = "max_length"
) -> None:
    dropped = total - reasons[""]
    why = [
        f"{reasons['judge']} with judge != 1",
        f"{reasons['too_short']} shorter than min_length={min_length} tokens",
        f"{reasons['too_long']} longer than {max_length_name}={max_length} tokens",
    ]
    message = f"SFT data ({fmt}): kept {reasons['']} of {total} rows; dropped {dropped}: {', '.join(why)}"
    if not reasons[""]:
        raise ValueError(f"no training sample left: {message}")
    (logger.warning if dropped else logger.info)(message)


def build_sft_dataset(
    rows: Dataset | list[dict],
    tokenizer: PreTrainedTokenizerBase,
    *,
    format: str = "auto",
    min_length: int = 0,
    max_length: int | None = None,
    judge_filter: bool = True,
    system_prompt: str | None = None,
    max_samples: int | None = None,
    num_proc: int | None = None,
    max_length_name: str = "max_length",
) -> Dataset:
    """Tokenized SFT samples with exactly the columns input_ids and completion_mask.

    fusang_long rows with judge != 1 are dropped (when judge_filter and the column exists),
    then samples with fewer than `min_length` or more than `max_length` tokens; the counts
    are logged (`max_length_name`: what the log calls the length limit). `max_samples` keeps
    the first rows before any filtering. A bad row raises ValueError naming its index (in
    `rows`) and field, and so do no rows or no row left; nothing is returned then.
    """
    if not isinstance(rows, Dataset):
        rows = Dataset.from_list(list(rows))
    if len(rows) == 0:
        raise ValueError("the training data has no rows")
    fmt = resolve_format(rows.column_names, format)
    has_generation_markers = bool(GENERATION_MARKER.search(chat_template_of(tokenizer)))
    if max_samples is not None and max_samples < len(rows):
        rows = rows.select(range(max_samples))
    encoded = rows.map(
        encode_row,
        with_indices=True,
        remove_columns=rows.column_names,
        features=OUTPUT_FEATURES,
        num_proc=num_proc,
        desc=f"Tokenizing {fmt} rows",
        fn_kwargs=dict(
            tokenizer=tokenizer,
            fmt=fmt,
            system_prompt=system_prompt,
            judge_filter=judge_filter,
            min_length=min_length,
            max_length=max_length,
            has_generation_markers=has_generation_markers,
        ),
    )
    reasons = encoded[_DROP]
    log_drops(Counter(reasons), len(rows), fmt, min_length, max_length, max_length_name)
    return encoded.select([i for i, reason in enumerate(reasons) if not reason]).remove_columns(_DROP)
