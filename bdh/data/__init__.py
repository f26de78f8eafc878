"""Curriculum data for the Hatching model: records, loaders, the starter set, sampler, byte tokens.

Five tasks (``TASKS``): text_completion, chain_of_thought, function_call, bash_command, tool_use.
Every example is a ``Record(id, task, source, prompt, target, schemas, group)``; the prompt is
already in the byte-level prompt format (``User: ...\\nAssistant: ``, function schemas on a
``Functions:`` block, ``<function_call>{...}</function_call>``, ```bash blocks,
``<tool_result>...</tool_result>`` turns; see bdh.data.records), and the loss covers the target.

For the trainer::

    from bdh.data import load_splits, CurriculumSampler, collate

    splits = load_splits(data_dir)          # None: the bundled starter set; or a `prepare` output dir
    # splits[task].train / .val: lists of Records; the val prompts never occur in train
    sampler = CurriculumSampler({t: s.train for t, s in splits.items()}, batch_size=16,
                                weights={"text_completion": 0.7, "chain_of_thought": 0.3},
                                seed=1337, rank=rank, world_size=world_size)
    batch = collate(sampler.next_batch(), seq_len=256)
    # batch["inputs"], batch["targets"]: LongTensor [B, 256]; targets is IGNORE_INDEX (-100) except
    # where the next byte belongs to the target, so F.cross_entropy(logits.view(-1, 256),
    # batch["targets"].view(-1)) is the loss over target bytes; batch["loss_mask"] (float, same
    # positions), batch["tasks"] and batch["ids"] give per-task losses and the records to log.
    sampler.set_weights(next_stage_weights)  # at a stage change
    checkpoint["sampler"] = sampler.state_dict()   # plain ints; restore with load_state_dict()

``encode(record, max_len)`` gives one record's (tokens, loss_mask); a too-long record loses the
start of its prompt first. ``EOS`` (byte 0) ends every target: generation stops there.
``decode(ids)`` turns ids back into text. Bad lines in data files are skipped and counted per
reason (malformed_json, missing_field, empty_target, invalid_function_call, too_long, ...), and the
counts logged to the ``bdh.data`` logger: never a crash, never silent.

From the shell: ``python -m bdh.data prepare --help`` (fetch the real datasets, or use what is
local and bundled), ``python -m bdh.data sources`` (hub ids, licences, local file layouts).
"""
from .prepare import STARTER_DIR, Splits, load_splits, prepare
from .records import DEFAULT_MAX_BYTES, TASKS, Record, chat_prompt, check_function_calls, invalid_reason, normalise
from .sampler import CurriculumSampler
from .sources import SOURCES
from .tokens import EOS, IGNORE_INDEX, PAD, VOCAB_SIZE, collate, decode, encode

__all__ = [
    "TASKS", "Record", "Splits", "SOURCES", "STARTER_DIR", "DEFAULT_MAX_BYTES",
    "load_splits", "prepare", "CurriculumSampler", "encode", "collate", "decode",
    "chat_prompt", "check_function_calls", "invalid_reason", "normalise",
    "EOS", "PAD", "IGNORE_INDEX", "VOCAB_SIZE",
]
