"""How long freeing a DataLoader takes after one of its workers raised: the garbage collector, not
a reference count, frees the iterator (the exception's traceback holds it in a cycle), after the
queues' feeder threads have stopped, so the workers never get the signal to end and each join
waits out torch's timeout. Against the iterator shut down on the spot.

    python bench/dataloader_error_wait.py --workers 2
"""

import argparse
import gc
import time

import torch


class FailsAtNine(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        if index == 9:
            raise ValueError("an image that does not decode")
        return torch.zeros(3)


def seconds_to_free(workers, shut_down_first):
    loader = torch.utils.data.DataLoader(FailsAtNine(), batch_size=2, num_workers=workers)
    iterator = iter(loader)
    try:
        for _ in iterator:
            pass
    except ValueError:
        pass
    started = time.monotonic()
    if shut_down_first:
        iterator._shutdown_workers()
    del loader, iterator
    gc.collect()
    return time.monotonic() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    workers = parser.parse_args().workers
    print(f"freed by the garbage collector: {seconds_to_free(workers, False):.2f} s")
    print(f"shut down first: {seconds_to_free(workers, True):.2f} s")
