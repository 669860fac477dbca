// goharness: the project's interop instrument around the Go reference eStargz library
// (Debian's golang-github-containerd-stargz-snapshotter-dev 0.12.0). Tests only: stargz never needs it.
//
//	goharness build [-chunk N] [-level L] [-prio a,b,...] [-allow-missing] [-zstd] IN.tar OUT
//	    builds with estargz.Build; prints one JSON object:
//	    {"toc_digest", "diff_id", "blob_digest", "blob_size", "missed_prioritized"}
//	goharness verify BLOB TOCDIGEST
//	    opens the blob (gzip eStargz, legacy stargz or zstd:chunked), checks the TOC against
//	    TOCDIGEST, reads every regular file through its chunks checking each chunk digest, and
//	    prints one JSON object: {"toc_digest", "chunks", "entries": [...]} where each entry is
//	    the file-system view of one path (hardlinks are reported as such, with their target).
//
// Any failure: one line on stderr and exit status 1.
package main

import (
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// zstdChunked pairs the reference's zstd:chunked compressor and decompressor, the way its
// converter does.
type zstdChunked struct {
	*zstdchunked.Decompressor
	*zstdchunked.Compressor
}

type buildResult struct {
	TOCDigest         string   `json:"toc_digest"`
	DiffID            string   `json:"diff_id"`
	BlobDigest        string   `json:"blob_digest"`
	BlobSize          int64    `json:"blob_size"`
	MissedPrioritized []string `json:"missed_prioritized"`
}

type entryView struct {
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Size     int64             `json:"size"`
	Mode     int64             `json:"mode"`
	Link     string            `json:"link"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	DevMajor int               `json:"dev_major"`
	DevMinor int               `json:"dev_minor"`
	Xattrs   map[string][]byte `json:"xattrs"`
	SHA256   string            `json:"sha256,omitempty"`
}

type verifyResult struct {
	TOCDigest string      `json:"toc_digest"`
	Chunks    int         `json:"chunks"`
	Entries   []entryView `json:"entries"`
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "goharness: %s: %v\n", what, err)
	os.Exit(1)
}

func openSection(name string) *io.SectionReader {
	f, err := os.Open(name)
	if err != nil {
		fail("open", err)
	}
	info, err := f.Stat()
	if err != nil {
		fail("stat", err)
	}
	return io.NewSectionReader(f, 0, info.Size())
}

func printJSON(v interface{}) {
	out, err := json.Marshal(v)
	if err != nil {
		fail("json", err)
	}
	fmt.Println(string(out))
}

func build(args []string) {
	flags := flag.NewFlagSet("build", flag.ExitOnError)
	chunk := flags.Int("chunk", 0, "chunk size in bytes (0: the library default, 4 MiB)")
	level := flags.Int("level", 9, "gzip level, or zstd level with -zstd")
	prio := flags.String("prio", "", "comma-separated prioritized paths")
	allowMissing := flags.Bool("allow-missing", false, "ignore prioritized paths not in the tar")
	useZstd := flags.Bool("zstd", false, "build zstd:chunked instead of gzip eStargz")
	flags.Parse(args)
	if flags.NArg() != 2 {
		fail("usage", fmt.Errorf("goharness build [flags] IN.tar OUT"))
	}
	opts := []estargz.Option{estargz.WithChunkSize(*chunk), estargz.WithCompressionLevel(*level)}
	missed := []string{}
	if *prio != "" {
		opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(*prio, ",")))
		if *allowMissing {
			opts = append(opts, estargz.WithAllowPrioritizeNotFound(&missed))
		}
	}
	if *useZstd {
		compressor := &zstdchunked.Compressor{CompressionLevel: zstd.EncoderLevelFromZstd(*level)}
		opts = append(opts, estargz.WithCompression(&zstdChunked{new(zstdchunked.Decompressor), compressor}))
	}
	blob, err := estargz.Build(openSection(flags.Arg(0)), opts...)
	if err != nil {
		fail("build", err)
	}
	defer blob.Close()
	out, err := os.Create(flags.Arg(1))
	if err != nil {
		fail("create", err)
	}
	hash := sha256.New()
	size, err := io.Copy(io.MultiWriter(out, hash), blob)
	if err != nil {
		fail("write", err)
	}
	if err := out.Close(); err != nil {
		fail("close", err)
	}
	printJSON(buildResult{blob.TOCDigest().String(), blob.DiffID().String(),
		fmt.Sprintf("sha256:%x", hash.Sum(nil)), size, missed})
}

// checker reads files through the reference reader, checking every chunk against its digest.
type checker struct {
	reader   *estargz.Reader
	verifier estargz.TOCEntryVerifier
	chunks   int
	entries  []entryView
}

// fileSHA256 reads the whole file chunk by chunk; each chunk must match its chunkDigest.
func (c *checker) fileSHA256(e *estargz.TOCEntry) string {
	whole := sha256.New()
	file, err := c.reader.OpenFile(e.Name)
	if err != nil {
		fail("open file "+e.Name, err)
	}
	for off := int64(0); off < e.Size; {
		ce, ok := c.reader.ChunkEntryForOffset(e.Name, off)
		if !ok {
			fail("chunks of "+e.Name, fmt.Errorf("no chunk at offset %d", off))
		}
		v, err := c.verifier.Verifier(ce)
		if err != nil {
			fail("verifier of "+e.Name, err)
		}
		if _, err := io.Copy(io.MultiWriter(v, whole), io.NewSectionReader(file, ce.ChunkOffset, ce.ChunkSize)); err != nil {
			fail("read "+e.Name, err)
		}
		if !v.Verified() {
			fail("verify "+e.Name, fmt.Errorf("chunk digest mismatch at offset %d", ce.ChunkOffset))
		}
		c.chunks++
		off = ce.ChunkOffset + ce.ChunkSize
	}
	return fmt.Sprintf("sha256:%x", whole.Sum(nil))
}

// walk visits the children of dir (at dirPath) in name order, depth first.
func (c *checker) walk(dir *estargz.TOCEntry, dirPath string) {
	children := map[string]*estargz.TOCEntry{}
	var names []string
	dir.ForeachChild(func(base string, e *estargz.TOCEntry) bool {
		names = append(names, base)
		children[base] = e
		return true
	})
	sort.Strings(names)
	for _, base := range names {
		e := children[base]
		p := path.Join(dirPath, base)
		view := entryView{Path: p, Type: e.Type, Size: e.Size, Mode: e.Mode & 07777, Link: e.LinkName,
			UID: e.UID, GID: e.GID, DevMajor: e.DevMajor, DevMinor: e.DevMinor, Xattrs: e.Xattrs}
		if e.Type != "dir" && e.Name != p {
			// The reference resolves a hardlink name to its target's entry.
			view.Type, view.Size, view.Link = "hardlink", 0, e.Name
		} else if e.Type == "reg" {
			view.SHA256 = c.fileSHA256(e)
		}
		c.entries = append(c.entries, view)
		if e.Type == "dir" {
			c.walk(e, p)
		}
	}
}

func verify(args []string) {
	if len(args) != 2 {
		fail("usage", fmt.Errorf("goharness verify BLOB TOCDIGEST"))
	}
	reader, err := estargz.Open(openSection(args[0]), estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		fail("open", err)
	}
	want, err := digest.Parse(args[1])
	if err != nil {
		fail("toc digest", err)
	}
	verifier, err := reader.VerifyTOC(want)
	if err != nil {
		fail("verify TOC", err)
	}
	root, ok := reader.Lookup("")
	if !ok {
		fail("lookup", fmt.Errorf("no root directory"))
	}
	c := &checker{reader: reader, verifier: verifier, entries: []entryView{}}
	c.walk(root, "")
	printJSON(verifyResult{reader.TOCDigest().String(), c.chunks, c.entries})
}

func main() {
	if len(os.Args) < 2 {
		fail("usage", fmt.Errorf("goharness build|verify ..."))
	}
	switch os.Args[1] {
	case "build":
		build(os.Args[2:])
	case "verify":
		verify(os.Args[2:])
	default:
		fail("usage", fmt.Errorf("unknown command %q: want build or verify", os.Args[1]))
	}
}
