-- Tables of the `message-processing` kind: customer conversations and their
-- messages, written from messaging-provider webhooks. They live in the public
-- schema because the messaging front end owns and reads them; jobrunner only
-- writes what the webhooks say.

CREATE TABLE public.conversations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant          text NOT NULL,
    -- The contact's number as the provider gives it (WhatsApp `wa_id`).
    contact_number  text NOT NULL,
    contact_name    text,
    -- Denormalised from messages, so listing conversations needs no aggregate.
    last_message_at timestamptz,
    unread_count    int  NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, contact_number)
);

-- The conversation list: one tenant's conversations, most recent first.
-- NULLS LAST so conversations without messages sort after the others.
CREATE INDEX conversations_tenant_last_message_idx
    ON public.conversations (tenant, last_message_at DESC NULLS LAST);
-- `?since=` reads of what changed.
CREATE INDEX conversations_updated_at_idx ON public.conversations (updated_at);

CREATE TABLE public.messages (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id     uuid NOT NULL REFERENCES public.conversations (id) ON DELETE CASCADE,
    -- The provider's id (WhatsApp `wamid.…`): providers resend webhooks, and this
    -- is what makes a resent message a duplicate.
    provider_message_id text NOT NULL UNIQUE,
    direction           text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    sender_type         text NOT NULL CHECK (sender_type IN ('contact', 'agent', 'system')),
    -- NULL or a short description such as "[image]" for messages without text.
    body                text,
    sent_at             timestamptz NOT NULL,
    -- Inbound: 'received'. Outbound: 'sent' < 'delivered' < 'read', or 'failed'.
    status              text NOT NULL CHECK (status IN ('received', 'sent', 'delivered', 'read', 'failed')),
    -- Inbound: an agent has read it. Outbound: the contact has (a read receipt came).
    is_read             boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- A conversation's messages in order, and its last message for the list.
CREATE INDEX messages_conversation_sent_at_idx ON public.messages (conversation_id, sent_at);
