"""The Python API on in-process workers: a diamond DAG whose tasks pass results along."""

import operator

from bndl.execute.context import ExecutionContext
from bndl.execute.job import Job, ResultOf, RmiTask
from bndl.execute.workers import ThreadWorker


def main() -> None:
    ctx = ExecutionContext([ThreadWorker(f"worker-{i}") for i in range(2)])
    source = RmiTask(ctx, "source", sum, (range(10),))
    left = RmiTask(ctx, "left", operator.mul, (ResultOf("source"), 2)).depends_on(source)
    right = RmiTask(ctx, "right", operator.add, (ResultOf("source"), 1)).depends_on(source)
    total = RmiTask(ctx, "total", operator.add, (ResultOf("left"), ResultOf("right")))
    total.depends_on(left, right)
    for task in ctx.execute(Job(ctx, [source, left, right, total])):
        print(f"{task.id}: {task.result()}")


if __name__ == "__main__":
    main()
