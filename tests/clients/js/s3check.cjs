// One S3 operation through the AWS SDK for JavaScript v3, for tests/clients/test_js_sdk.py.
//
//   node s3check.cjs put KEY FILE            PutObject of the file's bytes
//   node s3check.cjs stream KEY FILE         PutObject of a file stream (ContentLength given)
//   node s3check.cjs upload KEY FILE PART    lib-storage Upload of a stream, PART bytes a part
//   node s3check.cjs get KEY                 GetObject (ChecksumMode ENABLED): length, sha256
//   node s3check.cjs head KEY                HeadObject
//   node s3check.cjs list PREFIX             ListObjectsV2, every page
//   node s3check.cjs delete KEY...           DeleteObjects
//
// The endpoint, bucket and credentials come from TRIOS3_ENDPOINT, TRIOS3_BUCKET,
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; for HTTPS, NODE_EXTRA_CA_CERTS names the CA.
// Prints one JSON object: the result, the operations sent and how each request's body was
// sent (x-amz-content-sha256, content-encoding, trailer and checksum headers).
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const {
  S3Client,
  PutObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  DeleteObjectsCommand,
} = require("@aws-sdk/client-s3");
const { Upload } = require("@aws-sdk/lib-storage");

const client = new S3Client({
  endpoint: process.env.TRIOS3_ENDPOINT,
  region: "us-east-1",
  forcePathStyle: true,
  credentials: {
    accessKeyId: process.env.AWS_ACCESS_KEY_ID,
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
  },
  maxAttempts: 1,
});
const Bucket = process.env.TRIOS3_BUCKET;

const requests = [];
client.middlewareStack.add(
  (next, context) => async (args) => {
    const headers = {};
    for (const [name, value] of Object.entries(args.request.headers || {})) {
      const lower = name.toLowerCase();
      if (
        lower.startsWith("x-amz-checksum-") ||
        ["x-amz-content-sha256", "content-encoding", "x-amz-trailer", "content-md5",
         "transfer-encoding", "x-amz-sdk-checksum-algorithm"].includes(lower)
      ) {
        headers[lower] = value;
      }
    }
    requests.push({ operation: context.commandName.replace(/Command$/, ""), headers });
    return next(args);
  },
  { step: "finalizeRequest", name: "trios3Recorder", priority: "low" },
);

async function main(command, args) {
  switch (command) {
    case "put": {
      const [Key, file] = args;
      const out = await client.send(
        new PutObjectCommand({ Bucket, Key, Body: fs.readFileSync(file) }),
      );
      return { etag: out.ETag };
    }
    case "stream": {
      const [Key, file] = args;
      const out = await client.send(
        new PutObjectCommand({
          Bucket,
          Key,
          Body: fs.createReadStream(file),
          ContentLength: fs.statSync(file).size,
        }),
      );
      return { etag: out.ETag };
    }
    case "upload": {
      const [Key, file, part] = args;
      const upload = new Upload({
        client,
        params: { Bucket, Key, Body: fs.createReadStream(file) },
        partSize: Number(part),
        queueSize: 2,
        leavePartsOnError: false,
      });
      const out = await upload.done();
      return { etag: out.ETag, key: out.Key };
    }
    case "get": {
      const [Key] = args;
      const out = await client.send(new GetObjectCommand({ Bucket, Key, ChecksumMode: "ENABLED" }));
      const bytes = Buffer.from(await out.Body.transformToByteArray());
      return {
        contentLength: out.ContentLength,
        length: bytes.length,
        sha256: crypto.createHash("sha256").update(bytes).digest("hex"),
        etag: out.ETag,
      };
    }
    case "head": {
      const [Key] = args;
      const out = await client.send(new HeadObjectCommand({ Bucket, Key }));
      return { contentLength: out.ContentLength, etag: out.ETag };
    }
    case "list": {
      const [Prefix] = args;
      const objects = [];
      let ContinuationToken;
      do {
        const page = await client.send(
          new ListObjectsV2Command({ Bucket, Prefix, ContinuationToken, MaxKeys: 2 }),
        );
        for (const o of page.Contents || []) objects.push({ key: o.Key, size: o.Size, etag: o.ETag });
        ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (ContinuationToken);
      return { objects };
    }
    case "delete": {
      const out = await client.send(
        new DeleteObjectsCommand({
          Bucket,
          Delete: { Objects: args.map((Key) => ({ Key })) },
        }),
      );
      return {
        deleted: (out.Deleted || []).map((d) => d.Key).sort(),
        errors: out.Errors || [],
      };
    }
    default:
      throw new Error(`unknown command ${command}`);
  }
}

const [command, ...args] = process.argv.slice(2);
main(command, args).then(
  (result) => {
    process.stdout.write(JSON.stringify({ result, requests }) + "\n");
  },
  (error) => {
    process.stderr.write(
      JSON.stringify({
        name: error.name,
        message: error.message,
        status: error.$metadata && error.$metadata.httpStatusCode,
        requests,
      }) + "\n",
    );
    process.exit(1);
  },
);
