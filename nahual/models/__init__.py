"""Models that ship with nahual: ``echo`` here, the CPU zoo in its own modules."""
