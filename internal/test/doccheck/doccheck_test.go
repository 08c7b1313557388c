package doccheck

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const root = "../../.."

var (
	goBlock   = regexp.MustCompile("(?s)```go\n(.*?)```")
	diffBlock = regexp.MustCompile("(?s)```diff\n(.*?)```")
)

// lines returns text's lines, trimmed, without the empty ones.
func lines(text string) []string {
	var out []string
	for l := range strings.SplitSeq(text, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// contains reports whether sub is a run of whole lines of in.
func contains(in, sub []string) bool {
	for i := 0; i+len(sub) <= len(in); i++ {
		if slices.Equal(in[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// TestDocsShowExamples checks that every Go block of README.md and docs/ is
// a run of lines of one of the repository's example_test.go files, which
// compile and run (with their // Output:) in `go test`, or of the programs
// under examples/, which .ci/run runs; and that every line a diff block
// adds or keeps is a line of one of them (the lines it removes are the
// framework's own code, which the examples do not hold).
func TestDocsShowExamples(t *testing.T) {
	var examples [][]string
	require.NoError(t, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(path, "example_test.go") || strings.HasSuffix(path, ".go") && strings.Contains(filepath.ToSlash(path), "/examples/") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			examples = append(examples, lines(string(b)))
		}
		return nil
	}))
	require.NotEmpty(t, examples)
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	require.NoError(t, err)
	docs = append(docs, filepath.Join(root, "README.md"))
	blocks := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		require.NoError(t, err)
		for _, m := range goBlock.FindAllStringSubmatch(string(b), -1) {
			blocks++
			block := lines(m[1])
			found := false
			for _, ex := range examples {
				if contains(ex, block) {
					found = true
					break
				}
			}
			assert.True(t, found, "%s: this Go block is in no example_test.go:\n%s", filepath.Base(doc), m[1])
		}
		for _, m := range diffBlock.FindAllStringSubmatch(string(b), -1) {
			blocks++
			for l := range strings.SplitSeq(m[1], "\n") {
				if l == "" || l[0] == '-' {
					continue
				}
				line := strings.TrimSpace(l[1:])
				if line == "" {
					continue
				}
				found := false
				for _, ex := range examples {
					if slices.Contains(ex, line) {
						found = true
						break
					}
				}
				assert.True(t, found, "%s: this line of a diff is in no example: %s", filepath.Base(doc), line)
			}
		}
	}
	assert.Positive(t, blocks, "no Go block in the docs")
}
