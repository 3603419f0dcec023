"""A task module for unit tests: never connects (no broker is needed to build requests)."""

from baton import Baton, throttle

app = Baton("127.0.0.1:1")


@app.task
def fast(uuid):
    return f"fast {uuid}"


@app.task(name="demo.slow", max_retries=3)
def slow(uuid):
    with throttle(concurrency=1, key=f"vm:{uuid}"):
        return uuid


@app.task(heavy=True)
def heavy(uuid=0):
    return uuid


@app.task(throttle=1)
def dangerous(uuid=0):
    return uuid


@app.task
@throttle
def dangerous_seed_style(uuid=0):
    return uuid


@app.task
async def coro(x):
    return x
