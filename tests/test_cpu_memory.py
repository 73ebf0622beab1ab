"""A training process on the CPU takes its big tensors from freed heap memory, not fresh pages."""
import subprocess
import sys

# Steps of a vocabulary-sized head (256 tokens x 49,152 logits: 48 MiB, over glibc's 32 MiB
# cut-off for a mapping of its own) with its log-softmax and backward, as a training step has.
PROGRAM = """
import resource, sys, torch
from ouroboros.learn.cpu_memory import reuse_freed_memory

took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
# One thread: with more, a busy host decides which thread allocates what, and a worker thread's
# malloc arena is not the heap these settings keep (a full `make test` saw the count vary so).
torch.set_num_threads(1)
torch.manual_seed(0)
head = torch.nn.Linear(64, 49152)
hidden = torch.randn(256, 64)
target = torch.randint(49152, (256,))
def step():
    torch.nn.functional.cross_entropy(head(hidden), target).backward()
    head.zero_grad()

for _ in range(3):  # the heap grows to the steps' working set
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    step()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    took, count = proc.stdout.split()
    return took, int(count)


def test_training_steps_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    _, mapped = faults("default")
    took, reused = faults("reuse")
    assert took == "True"
    # Each step's logits and their gradients are 12,288 pages of 4 KiB apiece: by default every
    # step faults them in again; reusing the heap, once it has grown, steps fault in few.
    assert mapped > 6 * 12_288 and reused < mapped / 4, (mapped, reused)
