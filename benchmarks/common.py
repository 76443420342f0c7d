"""What the standalone benchmark scripts (long_video, beam_throughput) share."""
import os
import platform


def machine(**versions):
    """The machine a benchmark ran on: CPU model, cores, load average, Python, plus the given library versions.

    Args:
        **versions: extra entries, e.g. `tensorflow=tf.__version__`.

    Example:
        >>> machine(numpy="2.4.6")["cores"] >= 1
        True
    """
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
            **versions}
