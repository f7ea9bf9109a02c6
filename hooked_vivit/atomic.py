"""The earlier home of ``atomic_directory``; everything now lives in ``hooked_vivit.output_dir``."""

from hooked_vivit.output_dir import atomic_directory, output_directory  # noqa: F401
