// velero-s3check: the S3 calls velero's AWS plugin (velero-plugin-for-aws) makes, through
// aws-sdk-go-v2, against one endpoint and bucket, one JSON line per step on stdout.
//
// The client is built as the plugin builds it: config.LoadDefaultConfig with a region and a
// credentials file in velero's secret-file format, s3.NewFromConfig with UsePathStyle (its
// s3ForcePathStyle), an HTTP client trusting the CA bundle given (its caCert), and the endpoint
// (its s3Url) given by an endpoint resolver: this SDK version has no BaseEndpoint. Backups go
// up through manager.Uploader with a ChecksumAlgorithm (the plugin's checksumAlgorithm, CRC32 by
// default) and Tagging; the rest is HeadObject, GetObject (whole and ranged), ListObjectsV2 with
// a delimiter, paged, PresignGetObject (velero's download requests, fetched here with Go's own
// HTTP client) and DeleteObject, and a PutObject with ServerSideEncryption AES256 (the plugin's
// serverSideEncryption setting).
//
// Each step prints {"step": NAME, "ok": BOOL, "error": "...", ...} with what it saw (sizes,
// ETags, the headers the SDK sent), after checking what it can itself (bytes and sizes equal).
// A failed step does not stop the run; the last line is {"step": "done", ...}. The exit status
// is 0 when every step passed, 1 when one failed and 2 on bad arguments.
//
//	velero-s3check -endpoint URL -bucket B -credentials FILE [-ca PEM] -dir SCRATCH
//	velero-s3check -version
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// Set by scripts/install-clients.sh (-ldflags -X) from the sources it builds against.
var (
	s3Version      = "unknown"
	managerVersion = "unknown"
)

const (
	MiB      = 1024 * 1024
	partSize = 5 * MiB
	bigSize  = 12*MiB + 4321 // 5 MiB + 5 MiB + a short last part
	prefix   = "velero/backups/"
)

// -- what each step prints -----------------------------------------------------------------

// sentHeaders are the request headers a step reports: how the SDK sent its bodies.
var sentHeaders = []string{
	"Content-Encoding", "Content-Md5", "Range", "Transfer-Encoding",
	"X-Amz-Content-Sha256", "X-Amz-Decoded-Content-Length", "X-Amz-Sdk-Checksum-Algorithm",
	"X-Amz-Server-Side-Encryption", "X-Amz-Tagging", "X-Amz-Trailer",
	"X-Amz-Checksum-Crc32", "X-Amz-Checksum-Crc32c", "X-Amz-Checksum-Sha1",
	"X-Amz-Checksum-Sha256",
}

type request struct {
	Operation string            `json:"operation"`
	Method    string            `json:"method"`
	Status    int               `json:"status"`
	Headers   map[string]string `json:"headers"`
}

// recorder is the HTTP transport under the SDK: it keeps what each request sent.
type recorder struct {
	next     http.RoundTripper
	mu       sync.Mutex
	requests []request
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	seen := request{
		Operation: awsmiddleware.GetOperationName(req.Context()),
		Method:    req.Method,
		Headers:   map[string]string{},
	}
	for _, name := range sentHeaders {
		if v := req.Header.Get(name); v != "" {
			seen.Headers[strings.ToLower(name)] = v
		}
	}
	if len(req.TransferEncoding) > 0 {
		seen.Headers["transfer-encoding"] = strings.Join(req.TransferEncoding, ",")
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
	sort.SliceStable(out, func(i, j int) bool { return out[i].Operation < out[j].Operation })
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
		var api smithy.APIError
		if errors.As(err, &api) {
			out["code"] = api.ErrorCode()
		}
		failed = true
	}
	out["requests"] = rec.take()
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	return err == nil
}

// -- the client, as velero-plugin-for-aws makes it ------------------------------------------

func newClient(ctx context.Context, endpoint, credentials, ca string) (*s3.Client, *http.Client, error) {
	transport := awshttp.NewBuildableClient().GetTransport()
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("no certificate in %s", ca)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	rec = &recorder{next: transport}
	httpClient := &http.Client{Transport: rec}
	resolver := aws.EndpointResolverWithOptionsFunc(
		func(service, region string, options ...interface{}) (aws.Endpoint, error) {
			// SigningRegion too: without it this SDK version signs with an empty region.
			return aws.Endpoint{
				URL: endpoint, SigningRegion: region, HostnameImmutable: true,
				Source: aws.EndpointSourceCustom,
			}, nil
		})
	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithRegion("us-east-1"),
		// As velero does: its secret file is both the credentials and the config file.
		config.WithSharedCredentialsFiles([]string{credentials}),
		config.WithSharedConfigFiles([]string{credentials}),
		config.WithHTTPClient(httpClient),
		config.WithEndpointResolverWithOptions(resolver),
	)
	if err != nil {
		return nil, nil, err
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	return client, httpClient, nil
}

// -- the steps ------------------------------------------------------------------------------

func randomFile(dir, name string, size int) ([]byte, string, error) {
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		return nil, "", err
	}
	path := filepath.Join(dir, name)
	return data, path, os.WriteFile(path, data, 0o600)
}

func etagParts(etag string) string {
	etag = strings.Trim(etag, `"`)
	if i := strings.LastIndex(etag, "-"); i >= 0 {
		return etag[i+1:]
	}
	return ""
}

func main() {
	endpoint := flag.String("endpoint", "", "the S3 endpoint URL (http:// or https://)")
	bucket := flag.String("bucket", "", "an existing bucket")
	credentials := flag.String("credentials", "", "a credentials file (velero's secret-file format)")
	ca := flag.String("ca", "", "a PEM CA bundle to trust for HTTPS (empty: the system's)")
	dir := flag.String("dir", "", "a scratch directory")
	version := flag.Bool("version", false, "print the SDK versions and exit")
	flag.Parse()
	if *version {
		fmt.Printf("aws-sdk-go-v2 %s (service/s3 %s, feature/s3/manager %s), %s\n",
			aws.SDKVersion, s3Version, managerVersion, runtime.Version())
		return
	}
	if *endpoint == "" || *bucket == "" || *credentials == "" || *dir == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx := context.Background()
	client, httpClient, err := newClient(ctx, *endpoint, *credentials, *ca)
	if err != nil {
		fmt.Fprintln(os.Stderr, "velero-s3check:", err)
		os.Exit(2)
	}
	b := aws.String(*bucket)
	uploader := manager.NewUploader(client, func(u *manager.Uploader) { u.PartSize = partSize })

	bigKey := prefix + "b1/b1.tar.gz"
	smallKey := prefix + "b1/b1-logs.gz"
	big, bigPath, err := randomFile(*dir, "big.bin", bigSize)
	if err != nil {
		fmt.Fprintln(os.Stderr, "velero-s3check:", err)
		os.Exit(2)
	}
	small := []byte(`{"apiVersion":"velero.io/v1","kind":"Backup","metadata":{"name":"b1"}}` + "\n")
	small = bytes.Repeat(small, 300) // 22 kB: one PutObject
	if err := os.WriteFile(filepath.Join(*dir, "small.bin"), small, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "velero-s3check:", err)
		os.Exit(2)
	}

	// velero's ObjectStore.PutObject: an Uploader from an open file, CRC32, tags.
	upload := func(key string, body io.Reader, out step) error {
		got, err := uploader.Upload(ctx, &s3.PutObjectInput{
			Bucket:            b,
			Key:               aws.String(key),
			Body:              body,
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
			Tagging:           aws.String("velero.io/backup=b1&velero.io/storage-location=default"),
		})
		if err != nil {
			return err
		}
		out["key"] = key
		out["etag"] = aws.ToString(got.ETag)
		out["parts"] = len(got.CompletedParts)
		out["checksumCRC32"] = aws.ToString(got.ChecksumCRC32)
		out["versionId"] = aws.ToString(got.VersionID)
		return nil
	}
	run("upload-multipart", func(out step) error {
		f, err := os.Open(bigPath)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := upload(bigKey, f, out); err != nil {
			return err
		}
		if n := etagParts(out["etag"].(string)); n != "3" {
			return fmt.Errorf("ETag %s: want 3 parts", out["etag"])
		}
		return nil
	})
	run("upload-small", func(out step) error {
		if err := upload(smallKey, bytes.NewReader(small), out); err != nil {
			return err
		}
		if out["parts"].(int) != 0 {
			return fmt.Errorf("a multipart upload of %d bytes", len(small))
		}
		return nil
	})
	// More backups, for the listings: velero lists backups/ with a delimiter.
	for _, name := range []string{"b2", "b3", "b4"} {
		key := prefix + name + "/" + name + "-logs.gz"
		run("upload-"+name, func(out step) error { return upload(key, bytes.NewReader(small[:1000]), out) })
	}

	run("head", func(out step) error {
		sizes := map[string]int64{}
		etags := map[string]string{}
		for key, want := range map[string]int{bigKey: len(big), smallKey: len(small)} {
			got, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: aws.String(key)})
			if err != nil {
				return err
			}
			sizes[key], etags[key] = got.ContentLength, aws.ToString(got.ETag)
			if got.ContentLength != int64(want) {
				return fmt.Errorf("%s: ContentLength %d, want %d", key, got.ContentLength, want)
			}
		}
		out["sizes"], out["etags"] = sizes, etags
		return nil
	})

	get := func(key, rng string, want []byte, out step) error {
		input := &s3.GetObjectInput{Bucket: b, Key: aws.String(key)}
		if rng != "" {
			input.Range = aws.String(rng)
		}
		got, err := client.GetObject(ctx, input)
		if err != nil {
			return err
		}
		defer got.Body.Close()
		data, err := io.ReadAll(got.Body)
		if err != nil {
			return err
		}
		out["contentLength"], out["length"] = got.ContentLength, len(data)
		out["contentRange"] = aws.ToString(got.ContentRange)
		if !bytes.Equal(data, want) {
			return fmt.Errorf("%s %s: %d bytes that differ from the %d uploaded", key, rng, len(data), len(want))
		}
		return nil
	}
	run("get", func(out step) error { return get(bigKey, "", big, out) })
	run("get-range", func(out step) error {
		// Across the first part boundary, and within one segment.
		first, last := partSize-1000, partSize+99999
		out["range"] = fmt.Sprintf("bytes=%d-%d", first, last)
		return get(bigKey, out["range"].(string), big[first:last+1], out)
	})

	run("list-delimiter", func(out step) error {
		// velero's ListCommonPrefixes: backups/ with "/" and, here, one key a page.
		pages, prefixes := 0, []string{}
		paginator := s3.NewListObjectsV2Paginator(client, &s3.ListObjectsV2Input{
			Bucket: b, Prefix: aws.String(prefix), Delimiter: aws.String("/"), MaxKeys: 1,
		})
		for paginator.HasMorePages() {
			page, err := paginator.NextPage(ctx)
			if err != nil {
				return err
			}
			pages++
			for _, p := range page.CommonPrefixes {
				prefixes = append(prefixes, aws.ToString(p.Prefix))
			}
		}
		out["pages"], out["commonPrefixes"] = pages, prefixes
		want := []string{prefix + "b1/", prefix + "b2/", prefix + "b3/", prefix + "b4/"}
		if strings.Join(prefixes, ",") != strings.Join(want, ",") {
			return fmt.Errorf("CommonPrefixes %v, want %v", prefixes, want)
		}
		if pages != len(want) {
			return fmt.Errorf("%d pages, want %d", pages, len(want))
		}
		return nil
	})
	run("list-objects", func(out step) error {
		// velero's ListObjects: every key under a prefix, its sizes, a page at a time.
		pages, sizes, etags := 0, map[string]int64{}, map[string]string{}
		paginator := s3.NewListObjectsV2Paginator(client, &s3.ListObjectsV2Input{
			Bucket: b, Prefix: aws.String(prefix), MaxKeys: 2,
		})
		for paginator.HasMorePages() {
			page, err := paginator.NextPage(ctx)
			if err != nil {
				return err
			}
			pages++
			for _, o := range page.Contents {
				sizes[aws.ToString(o.Key)] = o.Size
				etags[aws.ToString(o.Key)] = aws.ToString(o.ETag)
			}
		}
		out["pages"], out["sizes"], out["etags"] = pages, sizes, etags
		if sizes[bigKey] != int64(len(big)) || sizes[smallKey] != int64(len(small)) {
			return fmt.Errorf("listed sizes %v are not the plaintext sizes", sizes)
		}
		if len(sizes) != 5 || pages != 3 {
			return fmt.Errorf("%d keys in %d pages, want 5 in 3", len(sizes), pages)
		}
		return nil
	})

	presigner := s3.NewPresignClient(client)
	for _, c := range []struct {
		name, key string
		want      []byte
	}{{"presign-get", smallKey, small}, {"presign-get-multipart", bigKey, big}} {
		run(c.name, func(out step) error {
			// velero's CreateSignedURL, for `velero backup download` and `logs`.
			signed, err := presigner.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String(c.key)},
				s3.WithPresignExpires(10*time.Minute))
			if err != nil {
				return err
			}
			out["method"] = signed.Method
			out["signed"] = strings.Contains(signed.URL, "X-Amz-Signature=")
			resp, err := httpClient.Get(signed.URL)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			data, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			out["status"], out["length"] = resp.StatusCode, len(data)
			if resp.StatusCode != 200 || !bytes.Equal(data, c.want) {
				return fmt.Errorf("presigned GET: %d, %d bytes, not the %d uploaded", resp.StatusCode, len(data), len(c.want))
			}
			return nil
		})
	}

	sseKey := prefix + "b2/b2-sse.json"
	run("put-sse", func(out step) error {
		put, err := client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: b, Key: aws.String(sseKey), Body: bytes.NewReader(small),
			ServerSideEncryption: types.ServerSideEncryptionAes256,
		})
		if err != nil {
			return err
		}
		out["etag"], out["serverSideEncryption"] = aws.ToString(put.ETag), string(put.ServerSideEncryption)
		head, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: aws.String(sseKey)})
		if err != nil {
			return err
		}
		out["headServerSideEncryption"] = string(head.ServerSideEncryption)
		out["contentLength"] = head.ContentLength
		if head.ContentLength != int64(len(small)) {
			return fmt.Errorf("ContentLength %d, want %d", head.ContentLength, len(small))
		}
		return get(sseKey, "", small, step{})
	})

	run("delete", func(out step) error {
		// velero's DeleteObject, then the object is gone.
		deleted := []string{prefix + "b3/b3-logs.gz", prefix + "b4/b4-logs.gz"}
		for _, key := range deleted {
			if _, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: b, Key: aws.String(key)}); err != nil {
				return err
			}
			_, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: aws.String(key)})
			var api smithy.APIError
			if !errors.As(err, &api) || api.ErrorCode() != "NotFound" {
				return fmt.Errorf("HeadObject %s after DeleteObject: %v, want NotFound", key, err)
			}
		}
		out["deleted"] = deleted
		return nil
	})

	line, _ := json.Marshal(step{"step": "done", "ok": !failed})
	fmt.Println(string(line))
	if failed {
		os.Exit(1)
	}
}
