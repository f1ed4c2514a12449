'use strict';
/*
 * s3rver for the benchmarks, as bench/s3servers.py starts it:
 *
 *     node bench/s3rver_main.js DIRECTORY ADDRESS PORT
 *
 * s3rver@3.7.1 (installed into bench/_work/node) with what the jobs meet on OBS and s3rver lacks
 * or gets wrong, so that a benchmark measures the client and the link, not s3rver's gaps:
 *
 * - ListMultipartUploads (GET /bucket?uploads) answers 501 NotImplemented and
 *   AbortMultipartUpload (DELETE /bucket/key?uploadId=...) 405: obs_io lists the uploads under
 *   the keys it is about to upload in parts (to abort those an interrupted run left), so every
 *   multipart upload failed. Both are answered here from s3rver's own upload folders.
 * - A multipart object's ETag is the MD5 of its bytes; on S3 and OBS it is the MD5 of the parts'
 *   MD5s followed by `-<parts>`. Clients that verify downloads (obs_io does) hash what an MD5
 *   ETag states, so an s3rver object cost them a pass over the bytes that an OBS object would
 *   not. Completing an upload here gives the S3 form, and concatenates the parts without
 *   hashing them again (their MD5s were taken as they arrived).
 * - PUT Object and Upload Part were answered once the last byte had entered the file's write
 *   stream, not once it was written: a GET right after a PUT, or the completion of an upload
 *   right after its last part, could read a short file. They are answered here once the file is
 *   written and renamed into place (a reader sees the old object or the new one, never a part).
 * - UploadPartCopy (PUT /bucket/key?partNumber=N&uploadId=ID with x-amz-copy-source and
 *   x-amz-copy-source-range) answered 501: s3transfer copies an object above the multipart
 *   threshold in such parts, as the engine does for a data-parallel replica of a rank it
 *   uploaded. Each part is read from the source object's file here, server side.
 */

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { once } = require('events');

const MODULES = path.join(__dirname, '_work', 'node', 'node_modules');
const S3rver = require(path.join(MODULES, 's3rver'));
const S3Error = require(path.join(MODULES, 's3rver', 'lib', 'models', 'error'));
const { sortBy } = require(path.join(MODULES, 'lodash'));

const [directory, address, port] = process.argv.slice(2);
if (!directory || !address || !port) {
  console.error('usage: node s3rver_main.js DIRECTORY ADDRESS PORT');
  process.exit(2);
}

/** Write `sources` (Buffers or readable streams, in order) to `dest` through a temporary file
 * renamed into place once written; MD5 of the bytes when `hash`. Resolves { size, md5 }. */
async function writeFile(dest, sources, hash) {
  await fs.promises.mkdir(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.${crypto.randomBytes(6).toString('hex')}.part`;
  const out = fs.createWriteStream(tmp);
  const md5 = hash ? crypto.createHash('md5') : null;
  let size = 0;
  try {
    const failed = once(out, 'error').then(([err]) => { throw err; });
    failed.catch(() => {});
    for (const source of sources) {
      const chunks = Buffer.isBuffer(source) ? [source] : source;
      for await (const chunk of chunks) {
        size += chunk.length;
        if (md5) md5.update(chunk);
        if (!out.write(chunk)) await Promise.race([once(out, 'drain'), failed]);
      }
    }
    out.end();
    await Promise.race([once(out, 'close'), failed]);
    await fs.promises.rename(tmp, dest);
  } catch (err) {
    out.destroy();
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
  return { size, md5: md5 ? md5.digest('hex') : null };
}

const app = new S3rver({ directory, address, port: Number(port), silent: true });
const store = app.store;
const uploadsDir = bucket => store.getResourcePath(bucket, undefined, 'uploads');

store.putObject = async function putObject(object) {
  const written = await writeFile(store.getResourcePath(object.bucket, object.key, 'object'),
    [object.content], true);
  await store.putMetadata(object.bucket, object.key, object.metadata, written.md5);
  return written;
};

store.putPart = async function putPart(bucket, uploadId, partNumber, content) {
  const partPath = path.join(uploadsDir(bucket), uploadId, partNumber.toString());
  const written = await writeFile(partPath, [content], true);
  await fs.promises.writeFile(`${partPath}.md5`, written.md5);
  return written;
};

store.putObjectMultipart = async function putObjectMultipart(bucket, uploadId, parts) {
  const dir = path.join(uploadsDir(bucket), uploadId);
  const key = (await fs.promises.readFile(path.join(dir, 'key'))).toString();
  const metadata = JSON.parse(await fs.promises.readFile(path.join(dir, 'metadata')));
  const ordered = sortBy(parts, part => part.number);
  const md5s = [];
  for (const part of ordered) {
    const md5 = (await fs.promises.readFile(path.join(dir, `${part.number}.md5`))
      .catch(() => { throw new S3Error('InvalidPart', 'One or more of the specified parts could not be found.'); }))
      .toString();
    if (md5 !== part.etag) {
      throw new S3Error('InvalidPart', "One or more of the specified parts' ETags do not match.");
    }
    md5s.push(Buffer.from(md5, 'hex'));
  }
  const etag = `${crypto.createHash('md5').update(Buffer.concat(md5s)).digest('hex')}-${ordered.length}`;
  const { size } = await writeFile(store.getResourcePath(bucket, key, 'object'),
    ordered.map(part => fs.createReadStream(path.join(dir, part.number.toString()))), false);
  await store.putMetadata(bucket, key, metadata, etag);
  await fs.promises.rm(dir, { recursive: true, force: true });
  return { size, md5: etag };
};

/** The uploads in progress in a bucket: [{ key, uploadId, initiated }], by key then id. */
async function uploadsInProgress(bucket) {
  const root = uploadsDir(bucket);
  const ids = await fs.promises.readdir(root).catch(err => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
  const found = [];
  for (const uploadId of ids) {
    const keyFile = path.join(root, uploadId, 'key');
    try {
      const [key, stat] = await Promise.all([fs.promises.readFile(keyFile), fs.promises.stat(keyFile)]);
      found.push({ key: key.toString(), uploadId, initiated: stat.mtime });
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;   // completed or aborted meanwhile
    }
  }
  return sortBy(found, [u => u.key, u => u.uploadId]);
}

const OWNER = { ID: '123456789000', DisplayName: 'S3rver' };

/** ListMultipartUploads and AbortMultipartUpload, before s3rver's router (after its XML encoder). */
async function multipartUploads(ctx, next) {
  const [bucket, ...rest] = ctx.path.replace(/^\//, '').split('/');
  const key = rest.map(decodeURIComponent).join('/');
  const listing = ctx.method === 'GET' && bucket && !key && 'uploads' in ctx.query;
  const abort = ctx.method === 'DELETE' && bucket && key && ctx.query.uploadId;
  if (!listing && !abort) return next();
  if (!(await store.getBucket(bucket))) {
    throw new S3Error('NoSuchBucket', 'The specified bucket does not exist', { BucketName: bucket });
  }
  if (abort) {
    const dir = path.join(uploadsDir(bucket), ctx.query.uploadId);
    const owner = await fs.promises.readFile(path.join(dir, 'key')).catch(() => null);
    if (owner === null || owner.toString() !== key) {
      throw new S3Error('NoSuchUpload', 'The specified upload does not exist.', { UploadId: ctx.query.uploadId });
    }
    await fs.promises.rm(dir, { recursive: true, force: true });
    ctx.status = 204;
    return;
  }
  const prefix = ctx.query.prefix || '';
  const limit = Math.min(Number(ctx.query['max-uploads'] || 1000), 1000);
  const after = [ctx.query['key-marker'] || '', ctx.query['upload-id-marker'] || ''];
  const all = (await uploadsInProgress(bucket)).filter(u => u.key.startsWith(prefix)
    && (u.key > after[0] || (u.key === after[0] && after[1] && u.uploadId > after[1])));
  const page = all.slice(0, limit);
  const last = page[page.length - 1];
  ctx.body = {
    ListMultipartUploadsResult: {
      '@': { xmlns: 'http://s3.amazonaws.com/doc/2006-03-01/' },
      Bucket: bucket,
      KeyMarker: after[0],
      UploadIdMarker: after[1],
      NextKeyMarker: last ? last.key : '',
      NextUploadIdMarker: last ? last.uploadId : '',
      Prefix: prefix,
      MaxUploads: limit,
      IsTruncated: all.length > page.length,
      Upload: page.map(u => ({
        Key: u.key, UploadId: u.uploadId, Initiator: OWNER, Owner: OWNER,
        StorageClass: 'STANDARD', Initiated: u.initiated.toISOString(),
      })),
    },
  };
}

/** UploadPartCopy, before s3rver's router (which refuses x-amz-copy-source with an uploadId). */
async function uploadPartCopy(ctx, next) {
  const source = ctx.headers['x-amz-copy-source'];
  if (ctx.method !== 'PUT' || !source || !ctx.query.uploadId || !ctx.query.partNumber) return next();
  const [bucket, ...rest] = ctx.path.replace(/^\//, '').split('/');
  const key = rest.map(decodeURIComponent).join('/');
  const dir = path.join(uploadsDir(bucket), ctx.query.uploadId);
  const owner = await fs.promises.readFile(path.join(dir, 'key')).catch(() => null);
  if (owner === null || owner.toString() !== key) {
    throw new S3Error('NoSuchUpload', 'The specified upload does not exist.', { UploadId: ctx.query.uploadId });
  }
  const [srcBucket, ...srcRest] = decodeURIComponent(source.split('?')[0]).replace(/^\//, '').split('/');
  const srcKey = srcRest.join('/');
  if (!(await store.existsObject(srcBucket, srcKey))) {
    throw new S3Error('NoSuchKey', 'The specified key does not exist.', { Key: srcKey });
  }
  const srcPath = store.getResourcePath(srcBucket, srcKey, 'object');
  const { size } = await fs.promises.stat(srcPath);
  let [start, end] = [0, size - 1];
  const range = ctx.headers['x-amz-copy-source-range'];
  if (range) {
    const m = /^bytes=(\d+)-(\d+)$/.exec(range);
    if (!m || Number(m[1]) > Number(m[2]) || Number(m[2]) >= size) {
      throw new S3Error('InvalidRange', 'The requested range is not satisfiable');
    }
    [start, end] = [Number(m[1]), Number(m[2])];
  }
  const written = await store.putPart(bucket, ctx.query.uploadId, ctx.query.partNumber,
    fs.createReadStream(srcPath, { start, end }));
  ctx.body = {
    CopyPartResult: {
      '@': { xmlns: 'http://s3.amazonaws.com/doc/2006-03-01/' },
      LastModified: new Date().toISOString(),
      ETag: JSON.stringify(written.md5),
    },
  };
}

app.middleware.splice(app.middleware.length - 1, 0, multipartUploads, uploadPartCopy);
app.run().catch(err => {
  console.error(`s3rver: ${err.message}`);
  process.exit(1);
});
