"""Background tasks that nothing awaits, kept alive until they end.

The event loop holds only weak references to its tasks, so a task that nobody refers to may be
collected before it finishes; each owner (a connection, the proxy, the audit writer) keeps its
own in a :class:`Tasks` and cancels them when it closes.
"""

from __future__ import annotations

import asyncio


class Tasks(set):
    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.add(task)
        task.add_done_callback(self.discard)
        return task

    def cancel(self) -> None:
        """Cancel every task but the one running this (a task ending its own owner goes on)."""
        current = asyncio.current_task()
        for task in list(self):
            if task is not current:
                task.cancel()
