package mlproducer_test

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproducer/mlproducer"
	"github.com/mlproducer/mlproducer/mlproducertest"
)

// TestTypedPublishBodyLimit: content within WithMaxContentBytes whose JSON
// escaping makes the body longer than the body limit is refused like any
// invalid task, before anything is sent or kept; the same content under the
// limit is published in a body of the size the validator predicted.
func TestTypedPublishBodyLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		ctx := context.Background()

		control := strings.Repeat("\x01", 1<<20) // 6 MiB once escaped
		_, err := p.PublishSummarization(ctx, "s", control, mlproducer.SummarizationOptions{})
		require.ErrorIs(t, err, mlproducer.ErrTooLarge)
		var ite *mlproducer.InvalidTaskError
		require.ErrorAs(t, err, &ite)
		assert.Equal(t, "content", ite.Field)
		assert.Contains(t, ite.Reason, "1114112") // the body limit
		_, err = p.PublishEmbedding(ctx, "s", strings.Repeat(`"`, 1<<20), mlproducer.EmbeddingOptions{})
		require.ErrorIs(t, err, mlproducer.ErrTooLarge)
		require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
		assert.Zero(t, b.Published())
		assert.Zero(t, p.Status().Accepted)

		// Under the limit, escapes and all: sent, and the consumer reads
		// it back.
		text := strings.Repeat("line \"quoted\"\n", 1000)
		r, err := p.PublishSummarization(ctx, "s", text, mlproducer.SummarizationOptions{Style: "bullets"})
		require.NoError(t, err)
		assert.Equal(t, mlproducer.Confirmed, r.State)
		msgs := b.Messages("ml.summarization")
		require.Len(t, msgs, 1)
		task, err := mlproducer.DecodeTask(msgs[0].Body)
		require.NoError(t, err)
		assert.Equal(t, text, task.Content)
		require.NoError(t, closeProducer(t, p))
	})
}

// TestDecodeTaskWithProducerOptions: a consumer of a Producer with larger
// limits or other schemes passes it the same options, and reads what it
// sends; with the defaults it refuses those bodies, saying why.
func TestDecodeTaskWithProducerOptions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		opts := []mlproducer.Option{mlproducer.WithMaxContentBytes(2 << 20), mlproducer.WithMediaURLSchemes("ftp")}
		p := newFake(t, b, opts...)
		waitConnected(t, p)
		ctx := context.Background()
		content := strings.Repeat("c", 1<<20+1<<19) // 1.5 MiB
		_, err := p.PublishEmbedding(ctx, "s", content, mlproducer.EmbeddingOptions{})
		require.NoError(t, err)
		_, err = p.PublishTranscription(ctx, "s", "ftp://h/a.mp3", mlproducer.TranscriptionOptions{})
		require.NoError(t, err)
		require.NoError(t, closeProducer(t, p))

		emb := b.Messages("ml.embedding")
		require.Len(t, emb, 1)
		_, err = mlproducer.DecodeTask(emb[0].Body)
		require.ErrorIs(t, err, mlproducer.ErrTooLarge)
		assert.Contains(t, err.Error(), "WithMaxContentBytes")
		task, err := mlproducer.DecodeTask(emb[0].Body, opts...)
		require.NoError(t, err)
		assert.Len(t, task.Content, len(content))

		trans := b.Messages("ml.transcription")
		require.Len(t, trans, 1)
		_, err = mlproducer.DecodeTask(trans[0].Body)
		var ite *mlproducer.InvalidTaskError
		require.ErrorAs(t, err, &ite)
		assert.Equal(t, "mediaUrl", ite.Field)
		task, err = mlproducer.DecodeTask(trans[0].Body, opts...)
		require.NoError(t, err)
		assert.Equal(t, "ftp://h/a.mp3", task.MediaURL)
	})
}
