"""Byte-level encoding: the loss mask covers exactly the target bytes (and the EOS after them)."""
import torch
import torch.nn.functional as F

from bdh.data import EOS, IGNORE_INDEX, VOCAB_SIZE, Record, collate, decode, encode, load_splits

RECORD = Record("t:1", "bash_command", "test", "User: list files, größte zuerst\nAssistant: ", "```bash\nls -S\n```")


def test_encode_is_prompt_then_target_then_eos_with_loss_only_on_the_target():
    tokens, mask = encode(RECORD)
    prompt, target = RECORD.prompt.encode(), RECORD.target.encode()
    assert tokens == list(prompt) + list(target) + [EOS]
    assert mask == [0] * len(prompt) + [1] * (len(target) + 1)
    assert all(0 <= t < VOCAB_SIZE for t in tokens)


def test_truncation_drops_the_start_of_the_prompt_first():
    tokens, mask = encode(RECORD, max_len=20)
    target = list(RECORD.target.encode()) + [EOS]
    assert len(tokens) == 20 and tokens[-len(target):] == target and sum(mask) == len(target)
    tokens, mask = encode(RECORD, max_len=5)
    assert tokens == target[:5] and mask == [1] * 5


def test_collate_shifts_pads_and_masks_exactly_the_target_bytes():
    short = Record("t:2", "chain_of_thought", "test", "User: 1+1?\nAssistant: ", "2\n#### 2")
    batch = collate([RECORD, short], seq_len=96)
    assert batch["inputs"].shape == batch["targets"].shape == batch["loss_mask"].shape == (2, 96)
    assert batch["tasks"] == ["bash_command", "chain_of_thought"] and batch["ids"] == ["t:1", "t:2"]
    for row, record in enumerate([RECORD, short]):
        mask = batch["loss_mask"][row].bool()
        assert bytes(batch["targets"][row][mask].tolist()) == record.target.encode() + bytes([EOS])
        assert (batch["targets"][row][~mask] == IGNORE_INDEX).all()
        n = len(record.prompt.encode()) + len(record.target.encode())
        assert bytes(batch["inputs"][row][:n].tolist()) == (record.prompt + record.target).encode()
        assert not mask[n:].any()  # padding never carries loss


def test_collated_batch_gives_a_finite_target_only_loss():
    batch = collate(load_splits()["function_call"].train[:4], seq_len=128)
    logits = torch.zeros(4, 128, VOCAB_SIZE, requires_grad=True)
    loss = F.cross_entropy(logits.view(-1, VOCAB_SIZE), batch["targets"].view(-1))
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 1e-5
    assert batch["loss_mask"].sum() > 0


def test_decode_inverts_encode():
    tokens, _ = encode(RECORD)
    assert decode(tokens) == RECORD.prompt + RECORD.target
