"""A training process on the CPU takes its big tensors from freed heap memory, not fresh pages."""
import subprocess
import sys

PROGRAM = """
import resource, torch
from ouroboros.learn.cpu_memory import reuse_freed_memory

def faults_of_a_big_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20)  # 64 MiB: over glibc's 32 MiB cut-off, so mapped on its own by default
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_big_tensor()
mapped = faults_of_a_big_tensor()
took = reuse_freed_memory()
faults_of_a_big_tensor()  # the heap grows once
print(took, mapped, faults_of_a_big_tensor())
"""


def test_a_freed_big_tensor_is_reused_instead_of_faulted_in_again():
    proc = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    took, mapped, reused = proc.stdout.split()
    assert took == "True"
    # 64 MiB is 16,384 pages of 4 KiB: each allocation faults them all in, until the setting.
    assert int(mapped) > 10_000 and int(reused) < 1_000, (mapped, reused)
