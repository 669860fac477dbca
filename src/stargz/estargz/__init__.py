"""The eStargz / legacy stargz / zstd:chunked format: pure, no network, no FUSE.

    source.py       RangeSource and its file / bytes / callable implementations
    footer.py       the 51-, 47- and 48-byte footers (and refusing the external-TOC one)
    toc.py          TOCEntry, TOC, parse_toc (hostile-input validation), clean_name
    tocparse.py     TOC JSON to TOCEntry records (msgspec), within Config [limits]
    tocindex.py     chunk tiling and layout, digests, hardlinks, implied dirs: the name index
    chunks.py       Chunk, the unit of fetching and verification
    reader.py       open_blob -> UnverifiedBlob -> VerifiedBlob (every chunk digest-checked)
    compression.py  gzip members / zstd frames, bounded decompression
    tarstream.py    tar headers (USTAR, PAX, GNU) with their raw bytes
    tarinput.py     plain / gzip / zstd tar input, spooling for reordering
    prioritize.py   the reference's reordering rules for prioritized files
    layout.py       members, parallel compression, in-order output
    writer.py       BuildOptions, build, BuildResult (+ layer annotations)
    extract.py      safe extraction to a directory, linear in the blob
    dirwalk.py      directory fds along one path (O_NOFOLLOW), for linear extraction
"""
