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

// The constructors build what the typed methods send: a consumer decodes the
// same task, whichever way it was published.
func TestTaskMessagesMatchTheTypedMethods(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := mlproducertest.NewBroker()
		defer b.Close()
		p := newFake(t, b)
		waitConnected(t, p)
		ctx := context.Background()
		sOpts := mlproducer.SummarizationOptions{MaxLength: 120, Language: "en"}
		tOpts := mlproducer.TranscriptionOptions{Language: "de"}
		eOpts := mlproducer.EmbeddingOptions{Dimensions: 8}
		build := []func() (mlproducer.Message, error){
			func() (mlproducer.Message, error) { return p.SummarizationMessage("sum-1", "share", "text", sOpts) },
			func() (mlproducer.Message, error) {
				return p.TranscriptionMessage("tr-1", "share", "https://media.example.com/a.mp3", tOpts)
			},
			func() (mlproducer.Message, error) { return p.EmbeddingMessage("", "share", "text", eOpts) },
		}
		typed := []func() (mlproducer.Receipt, error){
			func() (mlproducer.Receipt, error) { return p.PublishSummarization(ctx, "share", "text", sOpts) },
			func() (mlproducer.Receipt, error) {
				return p.PublishTranscription(ctx, "share", "https://media.example.com/a.mp3", tOpts)
			},
			func() (mlproducer.Receipt, error) { return p.PublishEmbedding(ctx, "share", "text", eOpts) },
		}
		for i := range build {
			msg, err := build[i]()
			require.NoError(t, err)
			d, err := p.PublishAsync(ctx, msg)
			require.NoError(t, err)
			_, err = d.Wait(ctx)
			require.NoError(t, err)
			_, err = typed[i]()
			require.NoError(t, err)
			q := taskQueues[i]
			got := b.Messages(q)
			require.Len(t, got, 2, q)
			viaMsg, err := mlproducer.DecodeTask(got[0].Body)
			require.NoError(t, err)
			viaTyped, err := mlproducer.DecodeTask(got[1].Body)
			require.NoError(t, err)
			assert.Equal(t, msg.ID, viaMsg.MessageID, "the body's messageId is the message's ID")
			assert.Equal(t, msg.ID, got[0].MessageID, "and its AMQP message_id")
			viaMsg.MessageID, viaTyped.MessageID = "", ""
			viaMsg.CreatedAt = viaTyped.CreatedAt
			assert.Equal(t, viaTyped, viaMsg, q)
		}
		require.NoError(t, closeProducer(t, p))
	})
}

// They refuse what the typed methods refuse, with the same errors, using the
// Producer's own limits.
func TestTaskMessagesRefuse(t *testing.T) {
	b := mlproducertest.NewBroker()
	defer b.Close()
	p := newFake(t, b, mlproducer.WithMaxContentBytes(10))
	defer closeProducer(t, p)
	ctx := context.Background()
	_, err := p.SummarizationMessage("", "share", strings.Repeat("x", 11), mlproducer.SummarizationOptions{})
	_, perr := p.PublishSummarization(ctx, "share", strings.Repeat("x", 11), mlproducer.SummarizationOptions{})
	require.ErrorIs(t, err, mlproducer.ErrTooLarge)
	assert.Equal(t, perr.Error(), err.Error())
	_, err = p.TranscriptionMessage("", "share", "ftp://media/a.mp3", mlproducer.TranscriptionOptions{})
	require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
	_, err = p.EmbeddingMessage("", "", "text", mlproducer.EmbeddingOptions{})
	require.ErrorIs(t, err, mlproducer.ErrInvalidTask)
	_, err = p.EmbeddingMessage(strings.Repeat("i", 300), "share", "text", mlproducer.EmbeddingOptions{})
	require.ErrorIs(t, err, mlproducer.ErrInvalidTask, "an id checked as WithMessageID checks it")
	assert.Zero(t, p.Status().Accepted)
}
