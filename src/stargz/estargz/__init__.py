"""The eStargz / legacy stargz / zstd:chunked format: pure, no network, no FUSE."""
