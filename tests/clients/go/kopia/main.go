// kopia-s3check: the S3 calls kopia's S3 storage makes, through minio-go v7, against one
// endpoint, one JSON line per step on stdout.
//
// The client is built as kopia builds it: minio.New with static credentials (kopia's
// --access-key and --secret-access-key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), Secure
// from the URL's scheme, a transport trusting the CA bundle given (kopia's --root-ca-pem-path),
// no region (minio-go asks GetBucketLocation) and bucket lookup left to minio-go (path style
// for any host that is not AWS's or another cloud's). Blobs go up as kopia sends them: one
// PutObject each with SendContentMd5 and DisableMultipart, ContentType application/x-kopia.
// Then StatObject, GetObject (whole and ranged), ListObjects WithVersions (kopia's
// point-in-time view), and Object Lock on a bucket made with ObjectLocking (which implies
// versioning): PutObject with a GOVERNANCE retention (kopia's --retention-mode and
// --retention-period), versioned GetObject and StatObject, GetObjectRetention and
// PutObjectRetention extending it (kopia's maintenance extends retention), RemoveObject of a
// locked version without and with GovernanceBypass, and a delete marker (kopia's DeleteBlob on
// a versioned bucket).
//
// Each step prints {"step": NAME, "ok": BOOL, "error": "...", "code": S3 error code, ...}
// after checking what it can itself (bytes and sizes equal). A failed step does not stop the
// run: later steps that need what it made report their own failure. The last line is
// {"step": "done", ...}; the exit status is 0 when every step passed, 1 when one failed and 2
// on bad arguments.
//
//	kopia-s3check -endpoint URL -bucket B -lock-bucket NEW [-ca PEM] -dir SCRATCH [-retain 2m]
//	kopia-s3check -version
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Set by scripts/install-clients.sh (-ldflags -X) from the sources it builds against.
var minioVersion = "unknown"

const (
	MiB      = 1024 * 1024
	packSize = 17*MiB + 4321 // above minio-go's 16 MiB multipart threshold: DisableMultipart matters
	packKey  = "kopia/p0123456789abcdef0123456789abcdef"
	indexKey = "kopia/xn0_0123456789abcdef0123456789abcdef-1"
	lockKey  = "kopia/q00112233445566778899aabbccddeeff"
)

// -- what each step prints -----------------------------------------------------------------

var sentHeaders = []string{
	"Content-Encoding", "Content-Md5", "Content-Type", "Range", "X-Amz-Bypass-Governance-Retention",
	"X-Amz-Content-Sha256", "X-Amz-Decoded-Content-Length", "X-Amz-Object-Lock-Mode",
	"X-Amz-Object-Lock-Retain-Until-Date", "X-Amz-Bucket-Object-Lock-Enabled", "X-Amz-Trailer",
}

type request struct {
	Method  string            `json:"method"`
	Query   []string          `json:"query"` // parameter names
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
}

// recorder is the HTTP transport under minio-go: it keeps what each request sent.
type recorder struct {
	next     http.RoundTripper
	mu       sync.Mutex
	requests []request
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	seen := request{Method: req.Method, Query: []string{}, Headers: map[string]string{}}
	for name := range req.URL.Query() {
		seen.Query = append(seen.Query, name)
	}
	sort.Strings(seen.Query)
	for _, name := range sentHeaders {
		if v := req.Header.Get(name); v != "" {
			seen.Headers[strings.ToLower(name)] = v
		}
	}
	resp, err := r.next.RoundTrip(req)
	if resp != nil {
		seen.Status = resp.StatusCode
	}
	r.mu.Lock()
	r.requests = append(r.requests, seen)
	r.mu.Unlock()
	return resp, err
}

func (r *recorder) take() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.requests
	r.requests = nil
	return out
}

type step map[string]any

var (
	failed bool
	rec    *recorder
)

// run runs one step and prints its line: ok unless fn returned an error.
func run(name string, fn func(out step) error) bool {
	out := step{"step": name}
	err := fn(out)
	out["ok"] = err == nil
	if err != nil {
		out["error"] = err.Error()
		if code := minio.ToErrorResponse(err).Code; code != "" {
			out["code"] = code
		}
		failed = true
	}
	out["requests"] = rec.take()
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	return err == nil
}

// -- the client, as kopia's s3 storage makes it ---------------------------------------------

func newClient(endpoint, ca string) (*minio.Client, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, err
	}
	secure := u.Scheme == "https"
	transport, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", ca)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	rec = &recorder{next: transport}
	return minio.New(u.Host, &minio.Options{
		Creds:     credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure:    secure,
		Transport: rec,
	})
}

// -- the steps ------------------------------------------------------------------------------

func random(size int) []byte {
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		panic(err)
	}
	return data
}

// putBlob is kopia's PutBlob: one PutObject, its MD5 sent, never multipart.
func putBlob(ctx context.Context, c *minio.Client, bucket, key string, data []byte,
	mode minio.RetentionMode, until time.Time, out step) (minio.UploadInfo, error) {
	info, err := c.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
		ContentType:      "application/x-kopia",
		SendContentMd5:   true,
		DisableMultipart: true,
		Mode:             mode,
		RetainUntilDate:  until,
	})
	if err != nil {
		return info, err
	}
	out["key"], out["etag"], out["size"], out["versionId"] = key, info.ETag, info.Size, info.VersionID
	return info, nil
}

func get(ctx context.Context, c *minio.Client, bucket, key string, opts minio.GetObjectOptions,
	want []byte, out step) error {
	obj, err := c.GetObject(ctx, bucket, key, opts)
	if err != nil {
		return err
	}
	defer obj.Close()
	data, err := io.ReadAll(obj)
	if err != nil {
		return err
	}
	out["length"] = len(data)
	if !bytes.Equal(data, want) {
		return fmt.Errorf("%s: %d bytes that differ from the %d expected", key, len(data), len(want))
	}
	return nil
}

type version struct {
	Key            string `json:"key"`
	VersionID      string `json:"versionId"`
	Size           int64  `json:"size"`
	ETag           string `json:"etag"`
	IsLatest       bool   `json:"isLatest"`
	IsDeleteMarker bool   `json:"isDeleteMarker"`
}

// listVersions is kopia's listing for a point in time: every version under a prefix.
func listVersions(ctx context.Context, c *minio.Client, bucket string) ([]version, error) {
	var out []version
	for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "kopia/", Recursive: true, WithVersions: true}) {
		if o.Err != nil {
			return out, o.Err
		}
		out = append(out, version{o.Key, o.VersionID, o.Size, o.ETag, o.IsLatest, o.IsDeleteMarker})
	}
	return out, nil
}

func main() {
	endpoint := flag.String("endpoint", "", "the S3 endpoint URL (http:// or https://)")
	bucket := flag.String("bucket", "", "an existing bucket")
	lockBucket := flag.String("lock-bucket", "", "a bucket to make, with Object Lock")
	ca := flag.String("ca", "", "a PEM CA bundle to trust for HTTPS (empty: the system's)")
	dir := flag.String("dir", "", "a scratch directory: the blobs uploaded are written there")
	retain := flag.Duration("retain", 2*time.Minute, "the retention of the locked versions")
	showVersion := flag.Bool("version", false, "print the SDK version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Printf("minio-go %s, %s\n", minioVersion, runtime.Version())
		return
	}
	if *endpoint == "" || *bucket == "" || *lockBucket == "" || *dir == "" {
		flag.Usage()
		os.Exit(2)
	}
	c, err := newClient(*endpoint, *ca)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kopia-s3check:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	pack, index := random(packSize), random(4096)
	first, second := random(300000), random(200000)
	for name, data := range map[string][]byte{"pack.bin": pack, "index.bin": index, "first.bin": first, "second.bin": second} {
		if err := os.WriteFile(filepath.Join(*dir, name), data, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, "kopia-s3check:", err)
			os.Exit(2)
		}
	}

	// -- blobs in an ordinary bucket ----------------------------------------------------------
	var packInfo minio.UploadInfo
	run("put", func(out step) error {
		packInfo, err = putBlob(ctx, c, *bucket, packKey, pack, "", time.Time{}, out)
		return err
	})
	run("put-small", func(out step) error {
		_, err := putBlob(ctx, c, *bucket, indexKey, index, "", time.Time{}, out)
		return err
	})
	run("stat", func(out step) error {
		info, err := c.StatObject(ctx, *bucket, packKey, minio.StatObjectOptions{})
		if err != nil {
			return err
		}
		out["size"], out["etag"], out["contentType"] = info.Size, info.ETag, info.ContentType
		if info.Size != int64(len(pack)) {
			return fmt.Errorf("Size %d, want %d", info.Size, len(pack))
		}
		if info.ETag != packInfo.ETag {
			return fmt.Errorf("ETag %s, PutObject said %s", info.ETag, packInfo.ETag)
		}
		return nil
	})
	run("get", func(out step) error { return get(ctx, c, *bucket, packKey, minio.GetObjectOptions{}, pack, out) })
	run("get-range", func(out step) error {
		// kopia reads a content out of a pack: a range within one, here across segments.
		var opts minio.GetObjectOptions
		first, last := int64(3*MiB-17), int64(3*MiB+300000)
		if err := opts.SetRange(first, last); err != nil {
			return err
		}
		out["range"] = fmt.Sprintf("bytes=%d-%d", first, last)
		return get(ctx, c, *bucket, packKey, opts, pack[first:last+1], out)
	})
	run("list-versions", func(out step) error {
		versions, err := listVersions(ctx, c, *bucket)
		out["versions"] = versions
		if err != nil {
			return err
		}
		sizes := map[string]int64{}
		for _, v := range versions {
			sizes[v.Key] = v.Size
		}
		if len(versions) != 2 || sizes[packKey] != int64(len(pack)) || sizes[indexKey] != int64(len(index)) {
			return fmt.Errorf("versions %v: want the two blobs with their plaintext sizes", versions)
		}
		return nil
	})

	// -- Object Lock ----------------------------------------------------------------------------
	run("lock-bucket", func(out step) error {
		if err := c.MakeBucket(ctx, *lockBucket, minio.MakeBucketOptions{ObjectLocking: true}); err != nil {
			return err
		}
		versioning, err := c.GetBucketVersioning(ctx, *lockBucket)
		if err != nil {
			return err
		}
		out["versioning"] = versioning.Status
		lock, mode, validity, unit, err := c.GetObjectLockConfig(ctx, *lockBucket)
		if err != nil {
			return err
		}
		out["objectLock"] = lock
		if mode != nil {
			out["defaultMode"], out["validity"], out["unit"] = *mode, *validity, *unit
		}
		if versioning.Status != "Enabled" || lock != "Enabled" {
			return fmt.Errorf("versioning %q, object lock %q: want both Enabled", versioning.Status, lock)
		}
		return nil
	})
	until := time.Now().UTC().Add(*retain).Truncate(time.Second)
	var v1, v2 string
	run("lock-put", func(out step) error {
		info, err := putBlob(ctx, c, *lockBucket, lockKey, first, minio.Governance, until, out)
		v1 = info.VersionID
		if err == nil && v1 == "" {
			return fmt.Errorf("no version id")
		}
		return err
	})
	run("lock-put-second", func(out step) error {
		info, err := putBlob(ctx, c, *lockBucket, lockKey, second, minio.Governance, until, out)
		v2 = info.VersionID
		if err == nil && (v2 == "" || v2 == v1) {
			return fmt.Errorf("version id %q after %q", v2, v1)
		}
		return err
	})
	run("lock-list-versions", func(out step) error {
		versions, err := listVersions(ctx, c, *lockBucket)
		out["versions"] = versions
		if err != nil {
			return err
		}
		want := []version{
			{Key: lockKey, VersionID: v2, Size: int64(len(second)), IsLatest: true},
			{Key: lockKey, VersionID: v1, Size: int64(len(first))},
		}
		if len(versions) != 2 {
			return fmt.Errorf("%d versions, want 2", len(versions))
		}
		for i, w := range want {
			got := versions[i]
			if got.VersionID != w.VersionID || got.Size != w.Size || got.IsLatest != w.IsLatest {
				return fmt.Errorf("version %d: %+v, want %+v", i, got, w)
			}
		}
		return nil
	})
	run("versioned-get", func(out step) error {
		if err := get(ctx, c, *lockBucket, lockKey, minio.GetObjectOptions{VersionID: v1}, first, out); err != nil {
			return err
		}
		return get(ctx, c, *lockBucket, lockKey, minio.GetObjectOptions{}, second, step{})
	})
	run("versioned-stat", func(out step) error {
		info, err := c.StatObject(ctx, *lockBucket, lockKey, minio.StatObjectOptions{VersionID: v1})
		if err != nil {
			return err
		}
		out["size"], out["versionId"] = info.Size, info.VersionID
		out["lockMode"] = info.Metadata.Get("X-Amz-Object-Lock-Mode")
		out["lockUntil"] = info.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date")
		if info.Size != int64(len(first)) || info.VersionID != v1 {
			return fmt.Errorf("size %d, version %q: want %d, %q", info.Size, info.VersionID, len(first), v1)
		}
		return nil
	})
	retention := func(out step, want time.Time) error {
		mode, date, err := c.GetObjectRetention(ctx, *lockBucket, lockKey, v1)
		if err != nil {
			return err
		}
		if mode != nil {
			out["mode"] = *mode
		}
		if date != nil {
			out["retainUntil"] = date.UTC().Format(time.RFC3339)
		}
		if mode == nil || *mode != minio.Governance || date == nil || !date.Equal(want) {
			return fmt.Errorf("retention %v until %v: want GOVERNANCE until %v", out["mode"], out["retainUntil"], want)
		}
		return nil
	}
	run("get-retention", func(out step) error { return retention(out, until) })
	later := until.Add(*retain)
	run("extend-retention", func(out step) error {
		mode := minio.Governance
		err := c.PutObjectRetention(ctx, *lockBucket, lockKey, minio.PutObjectRetentionOptions{
			Mode: &mode, RetainUntilDate: &later, VersionID: v1,
		})
		if err != nil {
			return err
		}
		return retention(out, later)
	})
	run("remove-locked", func(out step) error {
		// Before its retention ends a locked version stays, unless the governance is bypassed.
		err := c.RemoveObject(ctx, *lockBucket, lockKey, minio.RemoveObjectOptions{VersionID: v1})
		if err == nil {
			return fmt.Errorf("a GOVERNANCE-locked version was removed without a bypass")
		}
		out["refusal"] = err.Error()
		out["refusalCode"] = minio.ToErrorResponse(err).Code
		if _, err := c.StatObject(ctx, *lockBucket, lockKey, minio.StatObjectOptions{VersionID: v1}); err != nil {
			return fmt.Errorf("the locked version is gone after a refused removal: %w", err)
		}
		return nil
	})
	run("remove-bypass", func(out step) error {
		err := c.RemoveObject(ctx, *lockBucket, lockKey, minio.RemoveObjectOptions{VersionID: v1, GovernanceBypass: true})
		if err != nil {
			return err
		}
		_, err = c.StatObject(ctx, *lockBucket, lockKey, minio.StatObjectOptions{VersionID: v1})
		if err == nil {
			return fmt.Errorf("version %s is still there after its removal with a bypass", v1)
		}
		out["afterCode"] = minio.ToErrorResponse(err).Code
		return nil
	})
	run("delete-marker", func(out step) error {
		// kopia's DeleteBlob on a versioned bucket: a delete marker; the version stays.
		if err := c.RemoveObject(ctx, *lockBucket, lockKey, minio.RemoveObjectOptions{}); err != nil {
			return err
		}
		_, err := c.StatObject(ctx, *lockBucket, lockKey, minio.StatObjectOptions{})
		if err == nil {
			return fmt.Errorf("the key is still there after a delete marker")
		}
		out["latestCode"] = minio.ToErrorResponse(err).Code
		if err := get(ctx, c, *lockBucket, lockKey, minio.GetObjectOptions{VersionID: v2}, second, out); err != nil {
			return err
		}
		versions, err := listVersions(ctx, c, *lockBucket)
		out["versions"] = versions
		if err != nil {
			return err
		}
		markers := 0
		for _, v := range versions {
			if v.IsDeleteMarker && v.IsLatest {
				markers++
			}
		}
		if markers != 1 {
			return fmt.Errorf("no latest delete marker in %v", versions)
		}
		return nil
	})

	line, _ := json.Marshal(step{"step": "done", "ok": !failed})
	fmt.Println(string(line))
	if failed {
		os.Exit(1)
	}
}
