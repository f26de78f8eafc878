"""Byte-level tokens: a record becomes the UTF-8 bytes of prompt + target + EOS (vocab 256).

Loss is taken only where the next byte is a target byte or the EOS that ends the target; never on
prompt bytes, never on padding.
"""
import torch

VOCAB_SIZE = 256
EOS = 0  # ends every target, so generation knows where to stop (validation rejects NUL in text)
PAD = 0  # padding id; padded positions never carry loss
IGNORE_INDEX = -100  # in collate()'s targets: positions without loss (cross_entropy's default)


def encode(record, max_len=None) -> tuple:
    """(tokens, loss_mask): the record's byte ids and, per id, 1 if it is a target byte or EOS.

    max_len: keep at most this many ids. Bytes go from the start of the prompt first (the recent
    context stays); only if the target + EOS alone are longer is the end of the target cut.
    """
    prompt, target = list(record.prompt.encode()), list(record.target.encode()) + [EOS]
    if max_len is not None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        target = target[:max_len]
        room = max_len - len(target)
        prompt = prompt[max(0, len(prompt) - room):] if room else []
    return prompt + target, [0] * len(prompt) + [1] * len(target)


def collate(records, seq_len: int) -> dict:
    """A training batch for next-byte prediction with sequences of seq_len.

    Each record is encoded to at most seq_len + 1 ids, then shifted: ``inputs`` = ids[:-1],
    ``targets`` = ids[1:], right-padded to seq_len.

    Returns a dict:
      inputs     LongTensor [B, seq_len]   byte ids (PAD after the end)
      targets    LongTensor [B, seq_len]   next byte where it carries loss, else IGNORE_INDEX
      loss_mask  FloatTensor [B, seq_len]  1.0 where targets carries loss
      tasks, ids list[str]                  each row's task and record id (per-task losses, logging)

    ``F.cross_entropy(logits.view(-1, VOCAB_SIZE), targets.view(-1))`` is then the mean loss over
    target bytes only.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    records = list(records)
    inputs = torch.full((len(records), seq_len), PAD, dtype=torch.long)
    targets = torch.full((len(records), seq_len), IGNORE_INDEX, dtype=torch.long)
    loss_mask = torch.zeros((len(records), seq_len), dtype=torch.float32)
    for row, record in enumerate(records):
        tokens, mask = encode(record, seq_len + 1)
        n = len(tokens) - 1
        if n < 1:
            continue
        next_ids, next_mask = torch.tensor(tokens[1:]), torch.tensor(mask[1:], dtype=torch.bool)
        inputs[row, :n] = torch.tensor(tokens[:-1])
        targets[row, :n] = torch.where(next_mask, next_ids, torch.tensor(IGNORE_INDEX))
        loss_mask[row, :n] = next_mask.float()
    return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask,
            "tasks": [r.task for r in records], "ids": [r.id for r in records]}


def decode(ids) -> str:
    """Text from byte ids (PAD/EOS and invalid UTF-8 dropped or replaced)."""
    return bytes(int(i) for i in ids if int(i) != EOS).decode("utf-8", errors="replace")
