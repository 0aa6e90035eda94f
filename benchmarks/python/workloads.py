"""The work every Python benchmark shares, so each peer runs exactly the same code."""


def identity(x):
    return x


def is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def count_primes(bounds):
    lo, hi = bounds
    return sum(1 for n in range(lo, hi) if is_prime(n))


def prime_bounds(limit, chunks=64):
    step = limit // chunks
    return [(i * step, limit if i == chunks - 1 else (i + 1) * step) for i in range(chunks)]


def peer_installed(name):
    """True when the executor's module imports (multiprocessing and PPE always do)."""
    try:
        if name == "loky":
            from joblib.externals import loky  # noqa: F401
        elif name == "pebble":
            import pebble  # noqa: F401
        return True
    except ImportError:
        return False
