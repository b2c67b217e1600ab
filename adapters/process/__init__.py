"""Process plumbing: settings, startup and shutdown, workers and their supervisor."""
