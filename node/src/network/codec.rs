//! The request-response codec: a request or response is the whole stream
//! (the writer closes its side), read with a hard cap per protocol so a
//! peer cannot make us buffer more than the protocol allows.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;

/// Size caps of one request-response protocol.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_request: usize,
    max_response: usize,
}

impl FrameCodec {
    /// A codec refusing requests over `max_request` and responses over
    /// `max_response` bytes.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        FrameCodec {
            max_request,
            max_response,
        }
    }
}

async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    io.take(cap).read_to_end(&mut buf).await?;
    // Every frame of every protocol is at least one byte; an empty stream is
    // a writer that gave up (e.g. refused its own oversized request).
    if buf.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty frame"));
    }
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame over the limit of {max} bytes"),
        ));
    }
    Ok(buf)
}

async fn write_capped<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes is over the limit of {max}", bytes.len()),
        ));
    }
    io.write_all(bytes).await?;
    io.close().await
}

impl Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_capped(io, &req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_capped(io, &res, self.max_response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_stops_at_the_cap() {
        let mut codec = FrameCodec::new(8, 16);
        let protocol = StreamProtocol::new("/test/1");
        let mut ok = futures::io::Cursor::new(vec![1u8; 8]);
        assert_eq!(
            codec.read_request(&protocol, &mut ok).await.unwrap().len(),
            8
        );
        let mut big = futures::io::Cursor::new(vec![1u8; 1_000_000]);
        let err = codec.read_request(&protocol, &mut big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // It stopped after cap + 1 bytes instead of buffering the megabyte.
        assert_eq!(big.position(), 9);
        let mut big = futures::io::Cursor::new(vec![1u8; 17]);
        assert!(codec.read_response(&protocol, &mut big).await.is_err());
        let mut sink = futures::io::Cursor::new(Vec::new());
        assert!(codec
            .write_request(&protocol, &mut sink, vec![0; 9])
            .await
            .is_err());
        assert!(sink.get_ref().is_empty(), "nothing written past the cap");
        let mut empty = futures::io::Cursor::new(Vec::new());
        assert!(codec.read_request(&protocol, &mut empty).await.is_err());
    }
}
